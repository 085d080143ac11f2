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
		{name: "value over the limit is dropped", in: []string{"x-request-id", over, "traceparent", "00-tp"},
			want: map[string][]string{"traceparent": {"00-tp"}}},
		{name: "a megabyte id is dropped", in: []string{"x-request-id", huge, "tracestate", huge},
			want: map[string][]string{}},
		{name: "only the first values of a key", in: []string{
			"tracestate", "1", "tracestate", over, "tracestate", "2", "tracestate", "3", "tracestate", "4", "tracestate", "5",
		}, want: map[string][]string{"tracestate": {"1", "2", "3", "4"}}},
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
