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
	"github.com/stage4/stage4/internal/h2guard"
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
// real gRPC: alone, and with the h2guard Streams that Stage-4 gives it
// (the guard's own cost included).
func BenchmarkCall(b *testing.B) {
	for _, tc := range []struct {
		name         string
		limit, guard bool
	}{{name: "bare"}, {name: "limiter", limit: true}, {name: "guard+limiter", limit: true, guard: true}} {
		b.Run(tc.name, func(b *testing.B) {
			var opts []inflight.Option
			// Stream workers, as in Stage-4: a call on a fresh goroutine
			// would measure the growth of its stack.
			srvOpts := []grpc.ServerOption{grpc.NumStreamWorkers(64)}
			if tc.guard {
				g := h2guard.New(h2guard.WithStreamWindow(64 << 10))
				srvOpts = append(append(srvOpts, g.ServerOptions()...), grpc.Creds(g.Credentials(nil)), grpc.StaticStreamWindowSize(64<<10))
				opts = append(opts, inflight.WithRequests(func(ctx context.Context) (inflight.Request, bool) {
					if s := h2guard.FromContext(ctx); s != nil {
						return s, true
					}
					return nil, false
				}))
			}
			l, err := inflight.New(32<<20, 4<<20, opts...)
			require.NoError(b, err)
			srv := grpc.NewServer(srvOpts...)
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
