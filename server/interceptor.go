package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
)

// HeaderExecutionID is the response header that carries the execution id of
// an ExecutePlan call. It is sent before anything else, so a caller has it
// also when the call fails.
const HeaderExecutionID = "x-stage4-execution-id"

// Bounds on what a request can put into one PLAN_RECEIVED event; they are
// the validation limits, so a valid plan is recorded whole.
const (
	maxUserIDChars       = 128
	maxIdentifierChars   = 64
	maxPlanIDChars       = 80
	maxPeerIdentityChars = 256
	maxRecordedSteps     = 256
	maxMessageChars      = 1024
)

// execution identifies the ExecutePlan call whose PLAN_RECEIVED and
// EXECUTION_STARTED events are durable.
type execution struct {
	// ID is the execution_id of the call's events and response.
	ID string
	// PlanID is the plan's plan_id, as the interceptor's PlanIDFunc computed it.
	PlanID string
	// Validated is the request that the interceptor's ValidateFunc accepted. A handler that
	// receives this very request need not validate it again; any other
	// request (a middle interceptor replaced it) must be validated.
	Validated *stage4v1.ExecutePlanRequest
}

type executionKey struct{}

// executionFromContext returns the execution that the interceptor put into
// the handler's context. The handler must refuse to call Stage-3 without
// one: its absence means the call was not audited.
func executionFromContext(ctx context.Context) (execution, bool) {
	e, ok := ctx.Value(executionKey{}).(execution)
	return e, ok
}

// ValidateFunc is the single validation entry point of ExecutePlan: nil for
// a valid request, or the status error to return to the caller.
type ValidateFunc func(*stage4v1.ExecutePlanRequest) error

// PlanIDFunc computes a plan's plan_id. It is called on every received
// plan, valid or not, so it must accept any non-nil plan.
type PlanIDFunc func(*stage4v1.Plan) string

// AuditInterceptor records every ExecutePlan call in log: PLAN_RECEIVED,
// then validation with validate, EXECUTION_STARTED (durable before the
// handler runs) and exactly one terminal event. Every other method passes
// through untouched. It is the execution lifecycle at the gRPC edge: the
// log's errors become status codes here.
func AuditInterceptor(log *audit.Log, validate ValidateFunc, planID PlanIDFunc) grpc.UnaryServerInterceptor {
	c := &interceptorConfig{validate: validate, planID: planID}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info.FullMethod != stage4v1.Stage4Service_ExecutePlan_FullMethodName {
			return handler(ctx, req)
		}
		return c.execute(ctx, log, req, handler)
	}
}

type interceptorConfig struct {
	validate ValidateFunc
	planID   PlanIDFunc
}

func (c *interceptorConfig) execute(ctx context.Context, log *audit.Log, req any, handler grpc.UnaryHandler) (any, error) {
	var b [16]byte
	rand.Read(b[:]) // never fails since Go 1.24
	ex := &recorder{log: log, ctx: context.WithoutCancel(ctx), ev: stage4v1.AuditEvent{ExecutionId: hex.EncodeToString(b[:])}}
	if err := grpc.SetHeader(ctx, metadata.Pairs(HeaderExecutionID, ex.ev.ExecutionId)); err != nil {
		return nil, rpcerr.New(codes.Internal, rpcerr.NoServerStream, "cannot send the execution id header", ex.meta())
	}
	if log.Err() != nil {
		return nil, ex.unavailable()
	}
	r, _ := req.(*stage4v1.ExecutePlanRequest)
	var bd bounder
	if plan := r.GetPlan(); plan != nil {
		ex.ev.PlanId = bd.bound(c.planID(plan), maxPlanIDChars)
		ex.ev.UserId = bd.bound(plan.GetUserId(), maxUserIDChars)
	}
	details := receivedDetails(ctx, r.GetPlan(), &bd)
	// Not fsynced on its own: EXECUTION_STARTED or the validation failure
	// follows at once, and its fsync makes both durable. Stage-3 is called
	// only after that fsync, so this saves one fsync per execution without
	// executing anything that is not durably recorded.
	if log.AppendUnsynced(ex.ctx, ex.event(stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED, details)) != nil {
		return nil, ex.unavailable()
	}

	// From here on exactly one terminal event is written; ended is set just
	// before it. A panic in the validator or the handler leaves ended unset,
	// and the deferred call records it while the panic goes on to the
	// recovery interceptor outside.
	ended := false
	defer func() {
		if !ended {
			_ = ex.record(stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED,
				failedDetails(audit.PhaseInternal, codes.Internal, "panic while handling the execution"))
		}
	}()
	if err := c.validate(r); err != nil {
		ended = true
		st := status.Convert(err)
		if ex.record(stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED, failedDetails(audit.PhaseValidation, st.Code(), st.Message())) != nil {
			return nil, ex.unavailable()
		}
		return nil, err
	}
	if ex.record(stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED, nil) != nil {
		// The log has failed, so no terminal event can be written; the next
		// start closes this execution as interrupted.
		ended = true
		return nil, ex.unavailable()
	}

	began := time.Now()
	resp, err := handler(context.WithValue(ctx, executionKey{}, execution{ID: ex.ev.ExecutionId, PlanID: ex.ev.PlanId, Validated: r}), req)
	latency := time.Since(began)
	ended = true
	if err != nil {
		st := status.Convert(err)
		if ex.record(stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED, stage3FailedDetails(st)) != nil {
			return nil, ex.outcomeUnknown()
		}
		return nil, err
	}
	out, _ := resp.(*stage4v1.ExecutePlanResponse)
	if ex.record(stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED, &structpb.Struct{Fields: map[string]*structpb.Value{
		"step_count":        structpb.NewNumberValue(float64(len(out.GetResult().GetResults()))),
		"stage3_latency_ms": structpb.NewNumberValue(math.Round(latency.Seconds()*1e6) / 1e3),
	}}) != nil {
		return nil, ex.outcomeUnknown()
	}
	return resp, nil
}

// recorder appends the events of one execution. Its context is not
// cancelled with the call: a caller that goes away must not stop the audit.
type recorder struct {
	log *audit.Log
	ctx context.Context
	ev  stage4v1.AuditEvent // execution_id, plan_id and user_id of every event
}

// record appends a durable event of the execution.
func (r *recorder) record(t stage4v1.AuditEventType, details *structpb.Struct) error {
	_, err := r.log.Append(r.ctx, r.event(t, details))
	return err
}

// event is an event of the execution.
func (r *recorder) event(t stage4v1.AuditEventType, details *structpb.Struct) *stage4v1.AuditEvent {
	return &stage4v1.AuditEvent{
		Type:        t,
		ExecutionId: r.ev.ExecutionId,
		PlanId:      r.ev.PlanId,
		UserId:      r.ev.UserId,
		Details:     details,
	}
}

func (r *recorder) meta() map[string]string {
	return map[string]string{"execution_id": r.ev.ExecutionId}
}

func (r *recorder) unavailable() error {
	return rpcerr.New(codes.Unavailable, rpcerr.AuditUnavailable,
		"the audit log is unavailable; the plan was not executed", r.meta())
}

func (r *recorder) outcomeUnknown() error {
	return rpcerr.New(codes.Unknown, rpcerr.OutcomeUnknown,
		"the outcome could not be recorded in the audit log; the plan may have been executed", r.meta())
}

// receivedDetails describes a plan by its shape only: never token_hash,
// never a parameter value.
func receivedDetails(ctx context.Context, plan *stage4v1.Plan, bd *bounder) *structpb.Struct {
	f := map[string]*structpb.Value{}
	if plan != nil {
		f["trigger_type"] = structpb.NewStringValue(bd.bound(plan.GetTriggerType(), maxIdentifierChars))
		f["step_count"] = structpb.NewNumberValue(float64(len(plan.GetSteps())))
		f["binding_count"] = structpb.NewNumberValue(float64(len(plan.GetDataBindings())))
		steps := plan.GetSteps()
		if len(steps) > maxRecordedSteps {
			steps, bd.truncated = steps[:maxRecordedSteps], true
		}
		names := make([]*structpb.Value, len(steps))
		for i, s := range steps {
			names[i] = structpb.NewStringValue(bd.bound(s.GetDomain(), maxIdentifierChars) + "." + bd.bound(s.GetMethod(), maxIdentifierChars))
		}
		f["steps"] = structpb.NewListValue(&structpb.ListValue{Values: names})
		if t := plan.GetTokenHash(); t != "" {
			sum := sha256.Sum256([]byte(t))
			f["token_fingerprint"] = structpb.NewStringValue("sha256:" + hex.EncodeToString(sum[:8]))
		}
	}
	if p, ok := peer.FromContext(ctx); ok {
		if p.Addr != nil {
			f["peer"] = structpb.NewStringValue(bd.bound(p.Addr.String(), maxPeerIdentityChars))
		}
		if id := peerIdentity(p.AuthInfo); id != "" {
			f["peer_identity"] = structpb.NewStringValue(bd.bound(id, maxPeerIdentityChars))
		}
	}
	if bd.truncated {
		f["truncated"] = structpb.NewBoolValue(true)
	}
	return &structpb.Struct{Fields: f}
}

// peerIdentity names an mTLS client by its verified leaf certificate: the
// first URI SAN (a SPIFFE ID, say) or else the subject.
func peerIdentity(ai credentials.AuthInfo) string {
	info, ok := ai.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return ""
	}
	leaf := info.State.VerifiedChains[0][0]
	if len(leaf.URIs) > 0 {
		return leaf.URIs[0].String()
	}
	return leaf.Subject.String()
}

func failedDetails(phase string, c codes.Code, msg string) *structpb.Struct {
	var bd bounder
	f := map[string]*structpb.Value{
		"phase":   structpb.NewStringValue(phase),
		"code":    structpb.NewStringValue(code.Code(c).String()),
		"message": structpb.NewStringValue(bd.bound(msg, maxMessageChars)),
	}
	if bd.truncated {
		f["truncated"] = structpb.NewBoolValue(true)
	}
	return &structpb.Struct{Fields: f}
}

// stage3FailedDetails describes a failure on the way to or in Stage-3 by
// its code, its rpcerr reason and Stage-3's own code. Not by its message:
// that is Stage-3's text, which may quote parameter values (the reference
// Stage-3's json.get names the missing key, say), and the log never holds
// those. A fingerprint of the message lets an investigator match the
// caller's error or Stage-3's own trail.
func stage3FailedDetails(st *status.Status) *structpb.Struct {
	sum := sha256.Sum256([]byte(st.Message()))
	f := map[string]*structpb.Value{
		"phase":               structpb.NewStringValue(audit.PhaseStage3),
		"code":                structpb.NewStringValue(code.Code(st.Code()).String()),
		"message_fingerprint": structpb.NewStringValue("sha256:" + hex.EncodeToString(sum[:8])),
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == rpcerr.Domain {
			f["reason"] = structpb.NewStringValue(info.GetReason())
			if c, ok := info.GetMetadata()["stage3_code"]; ok {
				f["stage3_code"] = structpb.NewStringValue(c)
			}
		}
	}
	return &structpb.Struct{Fields: f}
}

// bounder cuts strings from a request to a number of characters and
// remembers whether it had to.
type bounder struct{ truncated bool }

func (b *bounder) bound(s string, chars int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	n := 0
	for i := range s {
		if n == chars {
			b.truncated = true
			return s[:i]
		}
		n++
	}
	return s
}
