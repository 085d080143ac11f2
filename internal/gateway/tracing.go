package gateway

import (
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"

	"github.com/stage4/stage4/internal/telemetry"
)

// tracing reports whether tp records spans: not nil and not OpenTelemetry's
// no-op provider (what telemetry.Setup returns when no exporter is set).
func tracing(tp trace.TracerProvider) bool {
	if tp == nil {
		return false
	}
	_, isNoop := tp.(noop.TracerProvider)
	return !isNoop
}

// serverTracingOptions make the caller's trace context the context of every
// call before any interceptor runs, so that the call log line and the audit
// events can name its trace. With tracing, otelgrpc's stats handler also
// starts the call's span. Without, only the propagator runs, as the first
// interceptor of both chains: otelgrpc's handler with a no-op provider
// carried the same context but cost about 6 µs per call (docs/DESIGN.md,
// "Where the time goes").
func serverTracingOptions(tp trace.TracerProvider) []grpc.ServerOption {
	if tracing(tp) {
		return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(telemetry.Propagator())))}
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(telemetry.ExtractUnaryServerInterceptor(telemetry.Propagator())),
		grpc.ChainStreamInterceptor(telemetry.ExtractStreamServerInterceptor(telemetry.Propagator())),
	}
}

// clientTracingOptions write the trace context into the metadata of the
// calls to Stage-3: with tracing as the child of the call's span (otelgrpc
// records the call's own span), without as the caller's context unchanged.
func clientTracingOptions(tp trace.TracerProvider) []grpc.DialOption {
	if tracing(tp) {
		return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(telemetry.Propagator())))}
	}
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(telemetry.InjectUnaryClientInterceptor(telemetry.Propagator()))}
}
