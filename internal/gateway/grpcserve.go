package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// NewHealth returns a health server that reports NOT_SERVING for services
// until the caller says otherwise: health.NewServer starts the overall
// service ("") as SERVING, which would be a lie before the listener is up.
func NewHealth(services ...string) *health.Server {
	hs := health.NewServer()
	SetHealth(hs, healthpb.HealthCheckResponse_NOT_SERVING, services...)
	return hs
}

// SetHealth sets the overall status ("") and that of each service together,
// so that probes of either never disagree.
func SetHealth(hs *health.Server, st healthpb.HealthCheckResponse_ServingStatus, services ...string) {
	hs.SetServingStatus("", st)
	for _, s := range services {
		hs.SetServingStatus(s, st)
	}
}

// abortWait bounds how long aborted calls may take to write their terminal
// audit event and answer, after the grace period.
const abortWait = 5 * time.Second

// ServeGRPC serves srv on lis until ctx is cancelled, then shuts down in
// the order that loses no work: health NOT_SERVING first, so that load
// balancers and probes stop sending new calls; then GracefulStop, which
// refuses new calls and waits for in-flight ones (ExecutePlan calls finish
// and write their terminal audit events); and Stop after grace as the
// fallback for calls that would not end. When grace is over, abort (if not
// nil) is called first and the calls get abortWait to answer their callers
// (Stage-4's end with OUTCOME_UNKNOWN, see server.WithAbort) before Stop
// closes the connections. It returns once srv has stopped.
func ServeGRPC(ctx context.Context, srv *grpc.Server, hs *health.Server, lis net.Listener, grace time.Duration, logger *slog.Logger, abort func()) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	select {
	case err := <-served:
		// Serve only returns early on a listener failure.
		return fmt.Errorf("serve grpc on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}

	logger.Info("shutting down", "grace", grace.String())
	// Shutdown sets every status to NOT_SERVING and ignores later updates,
	// so that an audit-failure callback cannot flip it back.
	hs.Shutdown()

	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		logger.Warn("grace period over; cancelling the remaining calls")
		if abort != nil {
			abort()
			select {
			case <-stopped:
			case <-time.After(abortWait):
			}
		}
		srv.Stop()
		<-stopped
	}
	// A signal right after start may stop the server before its goroutine
	// called Serve, which then reports ErrServerStopped: a clean stop too.
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve grpc on %s: %w", lis.Addr(), err)
	}
	logger.Info("stopped")
	return nil
}
