package gateway

import (
	"errors"
	"sync"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// readiness sets the health status of the overall service ("") and of
// Stage4Service, which readiness probes and load balancers read, from its
// inputs: the listener is up, the audit store can record, and Stage-3
// answers. SERVING needs all three. It is the one place that decides, so
// that no input's callback can undo another's (a store that recovers must
// not announce SERVING while Stage-3 is unreachable). The liveness service
// is not its concern: it follows the process alone. After hs.Shutdown
// (ServeGRPC), updates change nothing.
type readiness struct {
	hs       *health.Server
	services []string

	mu        sync.Mutex
	listening bool
	audit     error
	stage3    error
}

// errStage3Unchecked stands for Stage-3 until its first check.
var errStage3Unchecked = errors.New("stage3 not checked yet")

func newReadiness(hs *health.Server, services ...string) *readiness {
	return &readiness{hs: hs, services: services, stage3: errStage3Unchecked}
}

// setListening says the gRPC listener is up.
func (r *readiness) setListening() { r.update(func() { r.listening = true }) }

// setAudit says whether the audit store can record (nil) or not.
func (r *readiness) setAudit(err error) { r.update(func() { r.audit = err }) }

// setStage3 says whether Stage-3 answered its last check (nil) or not.
func (r *readiness) setStage3(err error) { r.update(func() { r.stage3 = err }) }

func (r *readiness) update(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f()
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if r.listening && r.audit == nil && r.stage3 == nil {
		st = healthpb.HealthCheckResponse_SERVING
	}
	SetHealth(r.hs, st, r.services...)
}
