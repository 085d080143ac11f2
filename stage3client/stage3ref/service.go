package stage3ref

import (
	"context"
	"crypto/subtle"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
)

// Option configures a Service.
type Option func(*Service)

// WithTokens sets the user_id -> token_hash table that authorizes plans; a
// user missing from it or a different token is PERMISSION_DENIED. The map is
// copied.
func WithTokens(tokens map[string]string) Option {
	return func(s *Service) { s.tokens = maps.Clone(tokens) }
}

// DefaultTokens is the table a Service uses without WithTokens, and the one
// `stage4 dev` serves: "alice" -> "alice-token" and "bob" -> "bob-token". The
// README's grpcurl examples use alice.
func DefaultTokens() map[string]string {
	return map[string]string{"alice": "alice-token", "bob": "bob-token"}
}

// Fault makes the Service misbehave on purpose, so tests can produce every
// outcome Stage-4 must handle. The zero Fault is a healthy executor.
type Fault struct {
	// Delay waits this long before executing (or until the call's context is
	// done), as a slow executor would.
	Delay time.Duration
	// Hang blocks until the call's context is done and returns its error, as an
	// executor that never answers would.
	Hang bool
	// Status, when set, is returned instead of executing: any code Stage-3
	// might send.
	Status *status.Status
	// Deny refuses every plan with PERMISSION_DENIED, as a revoked token would.
	Deny bool
	// Fail makes the step at 0-based index FailAtStep fail with INTERNAL after
	// the steps before it ran: a partially executed plan.
	Fail       bool
	FailAtStep int
}

// TrailEntry is one line of Stage-3's own audit trail.
type TrailEntry struct {
	Time        time.Time
	ExecutionID string
	UserID      string
	Steps       int
	// Code is the outcome: codes.OK when the plan ran to the end.
	Code codes.Code
}

// Service is the reference Stage3ServiceServer. It is safe for concurrent use.
type Service struct {
	stage3v1.UnimplementedStage3ServiceServer

	tokens map[string]string // read-only after NewService

	mu       sync.Mutex
	fault    Fault
	calls    int
	requests []*stage3v1.ExecuteMultiDomainPlanRequest // the last maxRecorded
	trail    []TrailEntry                              // the last maxRecorded
	waiters  []waiter
}

// maxRecorded bounds the requests and trail entries a Service keeps, so that
// a long-running reference Stage-3 (`stage4 dev`, a load run) does not grow
// without end; tests send far fewer.
const maxRecorded = 10000

// keepLast drops all but the last maxRecorded elements.
func keepLast[T any](s []T) []T {
	if len(s) > maxRecorded {
		return s[len(s)-maxRecorded:]
	}
	return s
}

var _ stage3v1.Stage3ServiceServer = (*Service)(nil)

// waiter is a Received channel to close once n requests have arrived.
type waiter struct {
	n  int
	ch chan struct{}
}

// NewService returns a healthy executor that authorizes DefaultTokens unless
// WithTokens says otherwise.
func NewService(opts ...Option) *Service {
	s := &Service{tokens: DefaultTokens()}
	for _, opt := range opts {
		opt(s)
	}
	return s
}

// SetFault replaces the fault applied to calls that arrive from now on.
func (s *Service) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

// Requests returns copies of the requests received (the last 10000), in
// arrival order, so tests can assert exactly-once and verbatim forwarding.
func (s *Service) Requests() []*stage3v1.ExecuteMultiDomainPlanRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*stage3v1.ExecuteMultiDomainPlanRequest, len(s.requests))
	for i, r := range s.requests {
		out[i] = proto.CloneOf(r)
	}
	return out
}

// Calls is the number of requests received, including refused ones.
func (s *Service) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// Trail returns Stage-3's own audit trail: one entry per finished call (the
// last 10000).
func (s *Service) Trail() []TrailEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.trail)
}

// Received returns a channel that is closed once n requests have arrived, so a
// test can wait for a call to be in flight (for example a hanging one) without
// sleeping.
func (s *Service) Received(n int) <-chan struct{} {
	ch := make(chan struct{})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls >= n {
		close(ch)
		return ch
	}
	s.waiters = append(s.waiters, waiter{n: n, ch: ch})
	return ch
}

// ExecuteMultiDomainPlan records the request before anything else, so that
// even refused calls are visible to tests, then executes it under the current
// fault.
func (s *Service) ExecuteMultiDomainPlan(ctx context.Context, req *stage3v1.ExecuteMultiDomainPlanRequest) (*stage3v1.ExecuteMultiDomainPlanResponse, error) {
	id, fault := s.record(req)
	resp, err := s.execute(ctx, id, req, fault)
	s.mu.Lock()
	s.trail = keepLast(append(s.trail, TrailEntry{
		Time:        time.Now().UTC(),
		ExecutionID: id,
		UserID:      req.GetUserId(),
		Steps:       len(req.GetSteps()),
		Code:        status.Code(err),
	}))
	s.mu.Unlock()
	return resp, err
}

func (s *Service) record(req *stage3v1.ExecuteMultiDomainPlanRequest) (string, Fault) {
	clone := proto.CloneOf(req)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	s.requests = keepLast(append(s.requests, clone))
	waiting := s.waiters[:0]
	for _, w := range s.waiters {
		if s.calls >= w.n {
			close(w.ch)
		} else {
			waiting = append(waiting, w)
		}
	}
	s.waiters = waiting
	return fmt.Sprintf("s3-%d", s.calls), s.fault
}

func (s *Service) execute(ctx context.Context, id string, req *stage3v1.ExecuteMultiDomainPlanRequest, fault Fault) (*stage3v1.ExecuteMultiDomainPlanResponse, error) {
	if err := stall(ctx, fault); err != nil {
		return nil, err
	}
	if fault.Status != nil {
		return nil, fault.Status.Err()
	}
	if fault.Deny || !s.authorized(req) {
		// The token is never echoed: error messages end up in logs.
		return nil, status.Errorf(codes.PermissionDenied, "user %q is not authorized", req.GetUserId())
	}
	methods, err := resolve(req)
	if err != nil {
		return nil, err
	}
	steps := req.GetSteps()
	outputs := make([]*structpb.Struct, len(steps))
	results := make([]*stage3v1.StepResult, 0, len(steps))
	for i, step := range steps {
		if err := ctx.Err(); err != nil {
			return nil, status.FromContextError(err).Err()
		}
		if fault.Fail && fault.FailAtStep == i {
			return nil, status.Errorf(codes.Internal, "step %d failed", i)
		}
		params, err := bind(i, step.GetParameters(), req.GetDataBindings(), outputs)
		if err != nil {
			return nil, err
		}
		out, err := methods[i](params)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "step %d (%s.%s): %v", i, step.GetDomain(), step.GetMethod(), err)
		}
		outputs[i] = out
		results = append(results, &stage3v1.StepResult{
			StepIndex: uint32(i),
			Domain:    step.GetDomain(),
			Method:    step.GetMethod(),
			Output:    out,
		})
	}
	return &stage3v1.ExecuteMultiDomainPlanResponse{Results: results, ExecutionId: id}, nil
}

// stall applies the Delay and Hang faults.
func stall(ctx context.Context, fault Fault) error {
	if fault.Hang {
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}
	if fault.Delay <= 0 {
		return nil
	}
	t := time.NewTimer(fault.Delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

func (s *Service) authorized(req *stage3v1.ExecuteMultiDomainPlanRequest) bool {
	want, ok := s.tokens[req.GetUserId()]
	return ok && subtle.ConstantTimeCompare([]byte(want), []byte(req.GetTokenHash())) == 1
}

// resolve looks up every step's method and checks every binding's indices
// before any step runs, so a plan that cannot run in full does not run at all.
func resolve(req *stage3v1.ExecuteMultiDomainPlanRequest) ([]method, error) {
	steps := req.GetSteps()
	methods := make([]method, len(steps))
	for i, step := range steps {
		m, ok := domains[step.GetDomain()].methods[step.GetMethod()]
		if !ok {
			return nil, status.Errorf(codes.NotFound, "step %d: unknown method %s.%s", i, step.GetDomain(), step.GetMethod())
		}
		methods[i] = m.run
	}
	for i, b := range req.GetDataBindings() {
		if b.GetSourceStep() >= b.GetTargetStep() || int(b.GetTargetStep()) >= len(steps) {
			return nil, status.Errorf(codes.InvalidArgument, "binding %d: need source_step < target_step < %d, got %d and %d",
				i, len(steps), b.GetSourceStep(), b.GetTargetStep())
		}
	}
	return methods, nil
}

// bind returns a copy of step i's parameters with its bindings applied; the
// received request is never mutated, because it is what Stage-4 audited.
func bind(i int, params *structpb.Struct, bindings []*stage3v1.DataBinding, outputs []*structpb.Struct) (*structpb.Struct, error) {
	out := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for k, v := range params.GetFields() {
		out.Fields[k] = proto.CloneOf(v)
	}
	for j, b := range bindings {
		if int(b.GetTargetStep()) != i {
			continue
		}
		v, ok := outputs[b.GetSourceStep()].GetFields()[b.GetSourceOutput()]
		if !ok {
			return nil, status.Errorf(codes.FailedPrecondition, "binding %d: step %d has no output %q", j, b.GetSourceStep(), b.GetSourceOutput())
		}
		out.Fields[b.GetTargetParameter()] = proto.CloneOf(v)
	}
	return out, nil
}
