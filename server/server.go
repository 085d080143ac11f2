// Package server implements stage4.v1.Stage4Service: it validates plans with
// the single entry point Validate, and forwards valid, audited plans once
// and verbatim to Stage-3.
package server

import (
	"context"
	"errors"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stage4/stage4/audit"
	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/catalog"
)

// Executor forwards a plan to Stage-3 exactly once. *stage3client.Client is
// the production implementation; its errors are already mapped for callers.
type Executor interface {
	Execute(ctx context.Context, req *stage3v1.ExecuteMultiDomainPlanRequest) (*stage3v1.ExecuteMultiDomainPlanResponse, error)
}

// EncodedExecutor is an Executor that can also send a request already in its
// binary encoding; *stage3client.Client is one. ExecutePlan then sends the
// plan's encoding that plan_id digests, instead of encoding it again.
type EncodedExecutor interface {
	Executor
	ExecuteEncoded(ctx context.Context, req []byte) (*stage3v1.ExecuteMultiDomainPlanResponse, error)
}

// AuditLister serves the audit log's records; *audit.Log is the
// implementation.
type AuditLister interface {
	// List returns a page of the events that pass f and the token of the
	// next page (see audit.Log.List).
	List(ctx context.Context, f audit.Filter, pageSize int, pageToken string) ([]audit.Event, string, error)
}

// AuditLog serves the audit log's records and its Merkle tree;
// *audit.Log is the implementation.
type AuditLog interface {
	AuditLister
	AuditTree
}

// Server implements stage4v1.Stage4ServiceServer. It must be registered
// behind AuditInterceptor: ExecutePlan refuses to run a plan whose
// execution the interceptor has not recorded.
type Server struct {
	stage4v1.UnimplementedStage4ServiceServer

	stage3    Executor
	log       AuditLog
	fp        *Fingerprinter
	validator *Validator // nil: Validate, and no catalogue to list
}

var _ stage4v1.Stage4ServiceServer = (*Server)(nil)

// New returns a Server that forwards to stage3, serves the audit log's
// events, checkpoints and proofs from log and computes ValidatePlan's
// plan_id with fp, as the audit interceptor does.
func New(stage3 Executor, log AuditLog, fp *Fingerprinter, opts ...Option) *Server {
	s := &Server{stage3: stage3, log: log, fp: fp}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Option configures a Server.
type Option func(*Server)

// WithValidator makes ValidatePlan (and ExecutePlan, for a request it
// must validate itself) validate with v, and ListMethods list v's
// catalogue. Give the audit interceptor the same v, so that a dry run and
// an execution cannot disagree. Without it, plans are validated with
// Validate and ListMethods answers CATALOG_STATE_OFF.
func WithValidator(v *Validator) Option {
	return func(s *Server) { s.validator = v }
}

// ExecutePlan validates the plan, forwards it once to Stage-3 and returns
// Stage-3's response unchanged. It does not retry, loop or branch on the
// result: the outcome, whatever it is, goes back to the caller.
func (s *Server) ExecutePlan(ctx context.Context, req *stage4v1.ExecutePlanRequest) (*stage4v1.ExecutePlanResponse, error) {
	exec, ok := executionFromContext(ctx)
	if !ok {
		return nil, rpcerr.New(codes.Internal, rpcerr.Internal, "execution was not audited; refusing to call Stage-3", nil)
	}
	// The audit interceptor validated this request before it recorded
	// EXECUTION_STARTED (cmd/stage4 wires it with Validate). Anything else,
	// such as a request replaced on the way, is validated here: the handler
	// never forwards a plan that was not validated as it is.
	if exec.Validated != req {
		if err := s.validator.Validate(req); err != nil {
			return nil, err
		}
	}
	if exec.RequestID != "" {
		// Stage-3 can dedupe too: the caller's key of this intent.
		ctx = stage3client.WithRequestID(ctx, exec.RequestID)
	}
	var res *stage3v1.ExecuteMultiDomainPlanResponse
	var err error
	if enc, ok := s.stage3.(EncodedExecutor); ok && exec.Validated == req && exec.Encoded != nil {
		// The interceptor encoded this very plan for plan_id: Stage-3 gets
		// those bytes, ToStage3's request in its wire form.
		res, err = enc.ExecuteEncoded(ctx, exec.Encoded)
	} else {
		res, err = s.stage3.Execute(ctx, ToStage3(req.GetPlan()))
	}
	if err != nil {
		return nil, err
	}
	return &stage4v1.ExecutePlanResponse{ExecutionId: exec.ID, PlanId: exec.PlanID, Result: res}, nil
}

// ValidatePlan is ExecutePlan's validation as a dry run.
func (s *Server) ValidatePlan(_ context.Context, req *stage4v1.ValidatePlanRequest) (*stage4v1.ValidatePlanResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, err
	}
	return &stage4v1.ValidatePlanResponse{PlanId: s.fp.PlanID(req.GetPlan())}, nil
}

// ListMethods lists the catalogue that plans are checked against: a
// plain read of what the validator's source holds, open to every caller.
func (s *Server) ListMethods(context.Context, *stage4v1.ListMethodsRequest) (*stage4v1.ListMethodsResponse, error) {
	if s.validator == nil || s.validator.catalogs == nil {
		return &stage4v1.ListMethodsResponse{State: stage4v1.CatalogState_CATALOG_STATE_OFF}, nil
	}
	snap := s.validator.catalogs.Snapshot()
	resp := &stage4v1.ListMethodsResponse{State: catalogState(snap.Status)}
	if !snap.AttemptTime.IsZero() {
		resp.AttemptTime = timestamppb.New(snap.AttemptTime)
	}
	if snap.Catalog != nil {
		// Shared with the catalogue, never modified: gRPC only encodes it.
		resp.Domains = snap.Catalog.Description().GetDomains()
		resp.FetchTime = timestamppb.New(snap.FetchTime)
	}
	return resp, nil
}

// catalogState maps a catalogue's status onto the contract's.
func catalogState(s catalog.Status) stage4v1.CatalogState {
	switch s {
	case catalog.StatusNotOffered:
		return stage4v1.CatalogState_CATALOG_STATE_NOT_OFFERED
	case catalog.StatusCurrent:
		return stage4v1.CatalogState_CATALOG_STATE_CURRENT
	case catalog.StatusStale:
		return stage4v1.CatalogState_CATALOG_STATE_STALE
	default:
		return stage4v1.CatalogState_CATALOG_STATE_UNAVAILABLE
	}
}

// ListAuditEvents serves the audit log.
func (s *Server) ListAuditEvents(ctx context.Context, req *stage4v1.ListAuditEventsRequest) (*stage4v1.ListAuditEventsResponse, error) {
	if err := protovalidate.Validate(req); err != nil {
		return nil, invalidArgument(err, rpcerr.InvalidListRequest)
	}
	if err := checkListFilters(req); err != nil {
		return nil, err
	}
	f := audit.Filter{
		ExecutionID: req.GetExecutionId(),
		PlanID:      req.GetPlanId(),
		UserID:      req.GetUserId(),
		Type:        audit.EventType(req.GetType()),
	}
	events, next, err := s.log.List(ctx, f, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, readError(ctx, err)
	}
	out := &stage4v1.ListAuditEventsResponse{AuditEvents: make([]*stage4v1.AuditEvent, len(events)), NextPageToken: next}
	for i := range events {
		if out.AuditEvents[i], err = eventToProto(&events[i]); err != nil {
			return nil, readError(ctx, err)
		}
	}
	return out, nil
}

// ToStage3 maps a plan onto Stage-3's request field by field: the verbatim
// forwarding of ExecutePlan. The two messages share field numbers and types
// (one wire encoding), and parameters are shared, not copied, so nothing
// can be added, dropped or normalised. The result aliases p's parameters.
func ToStage3(p *stage4v1.Plan) *stage3v1.ExecuteMultiDomainPlanRequest {
	steps := make([]*stage3v1.Step, len(p.GetSteps()))
	for i, st := range p.GetSteps() {
		steps[i] = &stage3v1.Step{Domain: st.GetDomain(), Method: st.GetMethod(), Parameters: st.GetParameters()}
	}
	var bindings []*stage3v1.DataBinding
	if n := len(p.GetDataBindings()); n > 0 {
		bindings = make([]*stage3v1.DataBinding, n)
		for i, b := range p.GetDataBindings() {
			bindings[i] = &stage3v1.DataBinding{
				SourceStep:      b.GetSourceStep(),
				SourceOutput:    b.GetSourceOutput(),
				TargetStep:      b.GetTargetStep(),
				TargetParameter: b.GetTargetParameter(),
			}
		}
	}
	return &stage3v1.ExecuteMultiDomainPlanRequest{
		UserId:       p.GetUserId(),
		TokenHash:    p.GetTokenHash(),
		TriggerType:  p.GetTriggerType(),
		Steps:        steps,
		DataBindings: bindings,
	}
}

// invalidArgument turns a protovalidate failure of a request without a plan
// into INVALID_ARGUMENT with reason and the same details as plan
// violations.
func invalidArgument(err error, reason stage4v1.ErrorReason) error {
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) || len(verr.Violations) == 0 {
		return rpcerr.New(codes.Internal, rpcerr.Internal, "validate request: validator failed", nil)
	}
	found := make([]*validate.Violation, len(verr.Violations))
	for i, v := range verr.Violations {
		found[i] = v.Proto
	}
	return violationsError(reason, found, len(found))
}
