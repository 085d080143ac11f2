package gateway_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/telemetry"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// TestOneTraceFromCallerToStage3 follows one ExecutePlan through real gRPC:
// the caller's span, Stage-4's server span, Stage-4's call to Stage-3 and
// the reference Stage-3's server span form one trace, each the parent of
// the next, and the audit events name that trace.
func TestOneTraceFromCallerToStage3(t *testing.T) {
	t.Parallel()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	withTP := otelgrpc.WithTracerProvider(tp)

	// The reference Stage-3, instrumented as a traced service would be.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s3 := grpc.NewServer(grpc.StatsHandler(otelgrpc.NewServerHandler(withTP, otelgrpc.WithPropagators(telemetry.Propagator()))))
	stage3v1.RegisterStage3ServiceServer(s3, stage3ref.NewService(stage3ref.WithTokens(stage3ref.DefaultTokens())))
	go func() { _ = s3.Serve(lis) }()
	t.Cleanup(s3.Stop)

	gw := startGateway(t, gateway.Config{
		Stage3:         stage3client.Config{Target: lis.Addr().String(), Insecure: true},
		TracerProvider: tp,
	})
	conn, err := grpc.NewClient(gw.addrs.GRPC.String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(withTP, otelgrpc.WithPropagators(telemetry.Propagator()))))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	client := stage4v1.NewStage4ServiceClient(conn)
	ctx := testContext(t)

	res, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)

	events, err := client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{ExecutionId: res.GetExecutionId()})
	require.NoError(t, err)
	require.NotEmpty(t, events.GetAuditEvents())
	received := events.GetAuditEvents()[0]

	// A server span ends after its response is sent, which may be after
	// the client has it: stopping both servers waits for their handlers.
	require.NoError(t, gw.stop())
	s3.GracefulStop()
	var execute []sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		if s.Name() == "stage4.v1.Stage4Service/ExecutePlan" {
			execute = append(execute, s)
		}
	}
	require.Len(t, execute, 2, "the caller's client span and Stage-4's server span")
	var callerSpan, stage4Span sdktrace.ReadOnlySpan
	for _, s := range execute {
		if s.SpanKind() == trace.SpanKindClient {
			callerSpan = s
		} else {
			stage4Span = s
		}
	}
	require.NotNil(t, callerSpan)
	require.NotNil(t, stage4Span)
	var toStage3, inStage3 sdktrace.ReadOnlySpan
	for _, s := range spans.Ended() {
		if s.Name() != "stage3.v1.Stage3Service/ExecuteMultiDomainPlan" {
			continue
		}
		if s.SpanKind() == trace.SpanKindClient {
			toStage3 = s
		} else {
			inStage3 = s
		}
	}
	require.NotNil(t, toStage3, "Stage-4's call to Stage-3 has a span")
	require.NotNil(t, inStage3, "the trace context reached Stage-3")

	traceID := callerSpan.SpanContext().TraceID()
	for _, s := range []sdktrace.ReadOnlySpan{stage4Span, toStage3, inStage3} {
		require.Equal(t, traceID, s.SpanContext().TraceID(), s.Name())
	}
	require.Equal(t, callerSpan.SpanContext().SpanID(), stage4Span.Parent().SpanID())
	require.Equal(t, stage4Span.SpanContext().SpanID(), toStage3.Parent().SpanID())
	require.Equal(t, toStage3.SpanContext().SpanID(), inStage3.Parent().SpanID())

	require.Equal(t, traceID.String(), received.GetDetails().GetFields()["trace_id"].GetStringValue())

	for _, s := range spans.Ended() {
		require.False(t, s.SpanKind() == trace.SpanKindClient && strings.HasPrefix(s.Name(), "grpc.health.v1.Health/"),
			"Stage-4's checks of Stage-3 are no one's trace: %s", s.Name())
	}
}

// TestTraceContextFlowsWithoutTracing checks the gateway with tracing off
// (no tracer provider, as serve runs without OTEL_* exporters): no span is
// made, but the caller's trace context and baggage reach Stage-3 unchanged,
// and the audit events name the caller's trace.
func TestTraceContextFlowsWithoutTracing(t *testing.T) {
	t.Parallel()
	seen := make(chan metadata.MD, 1)
	capture := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		seen <- md
		return handler(ctx, req)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s3 := grpc.NewServer(grpc.UnaryInterceptor(capture))
	stage3v1.RegisterStage3ServiceServer(s3, stage3ref.NewService(stage3ref.WithTokens(stage3ref.DefaultTokens())))
	go func() { _ = s3.Serve(lis) }()
	t.Cleanup(s3.Stop)

	for _, tp := range []trace.TracerProvider{nil, noop.NewTracerProvider()} {
		gw := startGateway(t, gateway.Config{
			Stage3:         stage3client.Config{Target: lis.Addr().String(), Insecure: true},
			TracerProvider: tp,
		})
		conn, err := grpc.NewClient(gw.addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		client := stage4v1.NewStage4ServiceClient(conn)
		const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		ctx := metadata.AppendToOutgoingContext(testContext(t),
			"traceparent", traceparent, "tracestate", "vendor=1", "baggage", "tenant=acme")
		res, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.NoError(t, err)

		md := <-seen
		require.Equal(t, []string{traceparent}, md.Get("traceparent"))
		require.Equal(t, []string{"vendor=1"}, md.Get("tracestate"))
		require.Equal(t, []string{"tenant=acme"}, md.Get("baggage"))

		events, err := client.ListAuditEvents(testContext(t), &stage4v1.ListAuditEventsRequest{ExecutionId: res.GetExecutionId()})
		require.NoError(t, err)
		require.NotEmpty(t, events.GetAuditEvents())
		require.Equal(t, "0af7651916cd43dd8448eb211c80319c", events.GetAuditEvents()[0].GetDetails().GetFields()["trace_id"].GetStringValue())
	}
}
