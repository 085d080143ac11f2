package stage3client_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// TestExecuteBoundsForwardedMetadata: a caller's huge or repeated
// correlation headers do not reach Stage-3 verbatim; values over the limit
// are dropped whole, never cut.
func TestExecuteBoundsForwardedMetadata(t *testing.T) {
	t.Parallel()
	atLimit := strings.Repeat("a", stage3client.MaxForwardedValueBytes)
	over := strings.Repeat("b", stage3client.MaxForwardedValueBytes+1)
	huge := strings.Repeat("c", 1<<20)
	tests := []struct {
		name string
		in   []string // key, value pairs of the caller's metadata
		want map[string][]string
	}{
		{name: "value at the limit is forwarded", in: []string{"x-request-id", atLimit},
			want: map[string][]string{"x-request-id": {atLimit}}},
		{name: "value over the limit is dropped", in: []string{"x-request-id", over},
			want: map[string][]string{}},
		{name: "a megabyte id is dropped", in: []string{"x-request-id", huge},
			want: map[string][]string{}},
		{name: "only the first values of a key", in: []string{
			"x-request-id", "1", "x-request-id", over, "x-request-id", "2", "x-request-id", "3", "x-request-id", "4", "x-request-id", "5",
		}, want: map[string][]string{"x-request-id": {"1", "2", "3", "4"}}},
		{name: "trace context is not copied by hand", in: []string{"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
			want: map[string][]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			seen := make(chan metadata.MD, 1)
			capture := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				md, _ := metadata.FromIncomingContext(ctx)
				seen <- md
				return handler(ctx, req)
			}
			client := newBufconn(t, stage3ref.NewService(), stage3client.Config{}, grpc.UnaryInterceptor(capture))
			ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs(tt.in...))
			_, err := client.Execute(ctx, upperPlan(t, "x"))
			require.NoError(t, err)

			md := <-seen
			got := map[string][]string{}
			for _, k := range []string{"x-request-id", "traceparent", "tracestate"} {
				if v := md.Get(k); len(v) > 0 {
					got[k] = v
				}
			}
			require.Equal(t, tt.want, got)
		})
	}
}
