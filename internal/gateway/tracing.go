package gateway

import (
	"context"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"

	"github.com/stage4/stage4/internal/telemetry"
	"github.com/stage4/stage4/stage3client"
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
		// Stage-3's health checks (stage3watch, every few seconds) on the
		// same connection are no one's trace.
		return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(telemetry.Propagator()),
			otelgrpc.WithFilter(filters.Not(filters.HealthCheck()))))}
	}
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(telemetry.InjectUnaryClientInterceptor(telemetry.Propagator()))}
}

// planCallsOnly runs interceptor for every call to Stage-3 but its health
// checks, which go on the same connection: the client metrics count the
// calls that carry plans, by code, not the watcher's checks, which have
// metrics of their own.
func planCallsOnly(interceptor grpc.UnaryClientInterceptor) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == stage3client.HealthCheckMethod {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		return interceptor(ctx, method, req, reply, cc, invoker, opts...)
	}
}
