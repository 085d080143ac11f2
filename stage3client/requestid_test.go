package stage3client_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// TestExecuteSendsTheRequestID: the request id set with WithRequestID
// reaches Stage-3 as x-stage4-request-id, through both ways of sending a
// plan; a caller's own metadata of that name never does.
func TestExecuteSendsTheRequestID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		id       string
		incoming []string // the caller's metadata
		want     []string
	}{
		{name: "set", id: "0b6c5c1e-3f27-4c8e-9a51-1f0f3d5e9a77", want: []string{"0b6c5c1e-3f27-4c8e-9a51-1f0f3d5e9a77"}},
		{name: "not set"},
		{name: "the caller's own header is not forwarded", incoming: []string{stage3client.RequestIDHeader, "forged"}},
		{name: "the validated id wins over the caller's header", id: "real", incoming: []string{stage3client.RequestIDHeader, "forged"}, want: []string{"real"}},
	}
	for _, tt := range tests {
		for _, encoded := range []bool{false, true} {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				seen := make(chan metadata.MD, 1)
				capture := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
					md, _ := metadata.FromIncomingContext(ctx)
					seen <- md
					return handler(ctx, req)
				}
				client := newBufconn(t, stage3ref.NewService(), stage3client.Config{}, grpc.UnaryInterceptor(capture))
				ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs(tt.incoming...))
				ctx = stage3client.WithRequestID(ctx, tt.id)
				var err error
				if encoded {
					b, merr := proto.Marshal(upperPlan(t, "x"))
					require.NoError(t, merr)
					_, err = client.ExecuteEncoded(ctx, b)
				} else {
					_, err = client.Execute(ctx, upperPlan(t, "x"))
				}
				require.NoError(t, err)
				require.Equal(t, tt.want, (<-seen).Get(stage3client.RequestIDHeader))
			})
		}
	}
}
