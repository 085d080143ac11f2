package inflight_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/inflight"
)

// instant answers ValidatePlan at once, so that a benchmark measures the
// call path only.
type instant struct {
	stage4v1.UnimplementedStage4ServiceServer
}

func (instant) ValidatePlan(context.Context, *stage4v1.ValidatePlanRequest) (*stage4v1.ValidatePlanResponse, error) {
	return &stage4v1.ValidatePlanResponse{}, nil
}

// BenchmarkCall measures what the Limiter adds to a small call through
// real gRPC.
func BenchmarkCall(b *testing.B) {
	for _, tc := range []struct {
		name  string
		limit bool
	}{{name: "bare"}, {name: "limiter", limit: true}} {
		b.Run(tc.name, func(b *testing.B) {
			l, err := inflight.New(32<<20, 4<<20)
			require.NoError(b, err)
			srv := grpc.NewServer()
			var reg grpc.ServiceRegistrar = srv
			if tc.limit {
				reg = l.Registrar(srv)
			}
			stage4v1.RegisterStage4ServiceServer(reg, instant{})
			lis := bufconn.Listen(1 << 20)
			go func() { _ = srv.Serve(lis) }()
			b.Cleanup(srv.Stop)
			conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
			require.NoError(b, err)
			b.Cleanup(func() { _ = conn.Close() })
			client := stage4v1.NewStage4ServiceClient(conn)
			req := request(300)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.ValidatePlan(context.Background(), req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
