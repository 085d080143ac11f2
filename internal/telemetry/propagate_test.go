package telemetry_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"github.com/stage4/stage4/internal/telemetry"
)

// hop is a health server that calls next (when set) from Check and records
// what it received.
type hop struct {
	healthpb.UnimplementedHealthServer
	next     healthpb.HealthClient
	incoming chan metadata.MD
	seen     chan seenContext
}

type seenContext struct {
	span    trace.SpanContext
	baggage string
}

func (h *hop) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	h.incoming <- md
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		// Nothing reads an invalid one; otelgrpc marks even that remote.
		sc = trace.SpanContext{}
	}
	h.seen <- seenContext{span: sc, baggage: baggage.FromContext(ctx).String()}
	if h.next != nil {
		return h.next.Check(ctx, req)
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func newHop() *hop {
	return &hop{incoming: make(chan metadata.MD, 1), seen: make(chan seenContext, 1)}
}

// serve runs h on a bufconn server with opts and returns a client of it.
func serve(t *testing.T, h *hop, serverOpts []grpc.ServerOption, clientOpts ...grpc.DialOption) healthpb.HealthClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(serverOpts...)
	healthpb.RegisterHealthServer(srv, h)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		append([]grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		}, clientOpts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

// TestPropagationWithoutTracingIsOtelgrpcsWithANoopProvider sends a
// caller's trace context through a gateway-like middle hop to a back hop,
// once with otelgrpc's stats handlers and a no-op tracer provider (what the
// gateway ran with tracing off) and once with these interceptors, and
// checks that the middle hop's context and what the back hop received are
// the same.
func TestPropagationWithoutTracingIsOtelgrpcsWithANoopProvider(t *testing.T) {
	t.Parallel()
	prop := telemetry.Propagator()
	tp := noop.NewTracerProvider()
	tests := []struct {
		name     string
		incoming metadata.MD
	}{
		{name: "trace context and baggage", incoming: metadata.Pairs(
			"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
			"tracestate", "vendor=1,other=2",
			"baggage", "tenant=acme",
		)},
		{name: "unsampled", incoming: metadata.Pairs("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")},
		{name: "malformed traceparent", incoming: metadata.Pairs("traceparent", "garbage", "tracestate", "vendor=1")},
		{name: "none", incoming: metadata.Pairs("x-request-id", "r-1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			run := func(serverOpts []grpc.ServerOption, clientOpts []grpc.DialOption) (metadata.MD, seenContext) {
				back := newHop()
				middle := newHop()
				middle.next = serve(t, back, nil, clientOpts...)
				client := serve(t, middle, serverOpts)
				_, err := client.Check(metadata.NewOutgoingContext(t.Context(), tt.incoming), &healthpb.HealthCheckRequest{})
				require.NoError(t, err)
				<-middle.incoming
				<-back.seen
				return <-back.incoming, <-middle.seen
			}
			wantMD, wantSeen := run(
				[]grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(prop)))},
				[]grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(prop)))})
			gotMD, gotSeen := run(
				[]grpc.ServerOption{grpc.ChainUnaryInterceptor(telemetry.ExtractUnaryServerInterceptor(prop))},
				[]grpc.DialOption{grpc.WithChainUnaryInterceptor(telemetry.InjectUnaryClientInterceptor(prop))})
			require.Equal(t, wantSeen, gotSeen)
			for _, k := range []string{"traceparent", "tracestate", "baggage"} {
				require.Equal(t, wantMD.Get(k), gotMD.Get(k), k)
			}
			if tt.name == "trace context and baggage" {
				require.True(t, gotSeen.span.IsValid())
				require.Equal(t, []string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, gotMD.Get("traceparent"))
				require.Equal(t, []string{"tenant=acme"}, gotMD.Get("baggage"))
			}
		})
	}
}
