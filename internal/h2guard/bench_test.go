package h2guard_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/stage4/stage4/internal/h2guard"
)

// benchDesc answers at once, so that a benchmark measures the call path.
var benchDesc = grpc.ServiceDesc{
	ServiceName: "h2guard.test.Bench",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{MethodName: "Call", Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		req := &wrapperspb.BytesValue{}
		if err := dec(req); err != nil {
			return nil, err
		}
		if icpt == nil {
			return req, nil
		}
		return icpt(ctx, req, &grpc.UnaryServerInfo{FullMethod: "/h2guard.test.Bench/Call"}, func(_ context.Context, req any) (any, error) { return req, nil })
	}}},
}

// BenchmarkCall measures what the guard adds to a small call (300 bytes
// each way) through real gRPC over loopback TCP, from 64 goroutines.
func BenchmarkCall(b *testing.B) {
	for _, tc := range []struct {
		name  string
		guard bool
	}{{name: "bare"}, {name: "guard", guard: true}} {
		b.Run(tc.name, func(b *testing.B) {
			opts := []grpc.ServerOption{grpc.StaticStreamWindowSize(streamWindow), grpc.StaticConnWindowSize(1 << 20), grpc.NumStreamWorkers(64)}
			if tc.guard {
				g := h2guard.New(h2guard.WithStreamWindow(streamWindow))
				opts = append(opts, g.ServerOptions()...)
				opts = append(opts, grpc.Creds(g.Credentials(nil)))
			}
			srv := grpc.NewServer(opts...)
			srv.RegisterService(&benchDesc, nil)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(b, err)
			go func() { _ = srv.Serve(lis) }()
			b.Cleanup(srv.Stop)
			conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			require.NoError(b, err)
			b.Cleanup(func() { _ = conn.Close() })
			req := &wrapperspb.BytesValue{Value: make([]byte, 300)}
			b.SetParallelism(32) // 64 goroutines on 2 CPUs
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var resp wrapperspb.BytesValue
				for pb.Next() {
					if err := conn.Invoke(context.Background(), "/h2guard.test.Bench/Call", req, &resp); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
