package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"maps"
	"math"
	"strings"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/identity"
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
	maxPeerIdentityChars = 256
	maxRequestIDChars    = 128
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
	// Encoded is the encoding of Validated's plan that PlanID digests
	// (Fingerprinter.PlanIDEncoded), which is also the encoding of its
	// Stage-3 request; nil when there is none.
	Encoded []byte
	// RequestID is the request_id whose key the call claimed, passed on
	// to Stage-3; empty for a call without one.
	RequestID string
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
// a valid request, or the status error to return to the caller. It must
// have no side effects: the interceptor runs it before PLAN_RECEIVED is
// written, so that how much of a plan the log describes depends on
// whether the plan is valid.
type ValidateFunc func(*stage4v1.ExecutePlanRequest) error

// AuditRecorder records the events of executions and keeps the keys of
// calls with a request_id; *audit.Log is the implementation.
type AuditRecorder interface {
	RequestKeeper
	// Append adds a durable event and returns it as written.
	Append(ctx context.Context, ev audit.Event) (audit.Event, error)
	// AppendUnsynced queues an event that the next Append makes durable.
	AppendUnsynced(ctx context.Context, ev audit.Event) error
	// Admit says why the log refuses a new execution now, nil while it
	// takes them, and counts the refusal (audit.Log.Admit).
	Admit() error
	// AppendLater keeps a terminal event that could not be appended, to
	// be written once the store is healthy again (audit.Log.AppendLater).
	AppendLater(ev audit.Event)
}

// AuditInterceptor records every ExecutePlan call in log: PLAN_RECEIVED,
// the validation outcome (validate), EXECUTION_STARTED (durable before the
// handler runs) and exactly one terminal event, with plan_id and
// fingerprints from fp. Every other method passes through untouched. It is
// the execution lifecycle at the gRPC edge: the log's errors become status
// codes here.
func AuditInterceptor(log AuditRecorder, validate ValidateFunc, fp *Fingerprinter, opts ...InterceptorOption) grpc.UnaryServerInterceptor {
	c := &interceptorConfig{validate: validate, fp: fp, abort: context.Background(), retention: audit.DefaultRequestRetention}
	for _, o := range opts {
		o(c)
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info.FullMethod != stage4v1.Stage4Service_ExecutePlan_FullMethodName {
			return handler(ctx, req)
		}
		return c.execute(ctx, log, req, handler)
	}
}

// InterceptorOption configures AuditInterceptor.
type InterceptorOption func(*interceptorConfig)

// WithAbort makes running executions end when ctx is done: their handler's
// context is cancelled, and a call whose plan had reached EXECUTION_STARTED
// answers UNKNOWN with reason OUTCOME_UNKNOWN (never UNAVAILABLE, which
// meshes retry) after its terminal event is written. The gateway cancels
// ctx when the shutdown grace period runs out.
func WithAbort(ctx context.Context) InterceptorOption {
	return func(c *interceptorConfig) { c.abort = ctx }
}

type interceptorConfig struct {
	validate   ValidateFunc
	fp         *Fingerprinter
	abort      context.Context
	retention  time.Duration
	observeKey func(context.Context, KeyOutcome)
}

func (c *interceptorConfig) execute(ctx context.Context, log AuditRecorder, req any, handler grpc.UnaryHandler) (any, error) {
	var b [16]byte
	rand.Read(b[:]) // never fails since Go 1.24
	ex := &recorder{log: log, ctx: context.WithoutCancel(ctx), ev: audit.Event{ExecutionID: hex.EncodeToString(b[:])}}
	r, _ := req.(*stage4v1.ExecutePlanRequest)
	// Sent now, not with the response: a caller whose connection dies while
	// Stage-3 runs must already hold the id to look the execution up. A
	// call with a request_id sends it once its key is looked up, still
	// before Stage-3 is called: one answered from an earlier call names
	// that call's execution (claimKey).
	keyed := r.GetRequestId() != ""
	if !keyed {
		if err := c.sendHeader(ctx, ex, nil); err != nil {
			return nil, err
		}
	}
	if log.Admit() != nil {
		if keyed {
			return nil, c.sendHeader(ctx, ex, ex.unavailable())
		}
		return nil, ex.unavailable()
	}
	// Validation first (it has no side effects): an invalid plan is
	// described by counts and fingerprints only, so that hostile plans
	// cannot make the log grow by more than a few KiB each. A panic is
	// held until PLAN_RECEIVED is written, then re-raised below.
	verr, panicked := safeValidate(c.validate, r)
	valid := verr == nil && panicked == nil
	var bd bounder
	var encoded []byte
	if plan := r.GetPlan(); plan != nil {
		ex.ev.PlanID, encoded = c.fp.PlanIDEncoded(plan)
		ex.ev.UserID = plan.GetUserId()
		if !valid && !isUserID(ex.ev.UserID) {
			ex.ev.UserID = ""
		}
	}
	if keyed {
		if !valid {
			// An invalid call claims nothing: it executes nothing, and
			// its retry with the plan fixed runs as a first call.
			if err := c.sendHeader(ctx, ex, nil); err != nil {
				return nil, err
			}
		} else if resp, err, done := c.claimKey(ctx, log, ex, r); done {
			return resp, err
		}
	}
	details := c.receivedDetails(ctx, r.GetPlan(), valid, &bd)
	if ex.key != nil {
		// The key, whole: a log directory finds it here after a crash.
		details[audit.DetailRequestID] = ex.key.ID
		details[audit.DetailRequestCaller] = ex.key.Caller
	}
	// Not durable on its own: EXECUTION_STARTED or the validation failure
	// follows at once, and its commit makes both durable. Stage-3 is called
	// only after that commit, so this saves one commit per execution without
	// executing anything that is not durably recorded.
	if log.AppendUnsynced(ex.ctx, ex.event(audit.PlanReceived, details)) != nil {
		ex.release()
		return nil, ex.unavailable()
	}

	// From here on exactly one terminal event is written; ended is set just
	// before it. A panic in the validator or the handler leaves ended unset,
	// and the deferred call records it while the panic goes on to the
	// recovery interceptor outside.
	ended := false
	defer func() {
		if !ended {
			_ = ex.end(audit.ExecutionFailed,
				failedDetails(audit.PhaseInternal, codes.Internal, "panic while handling the execution"), unknownOutcome, rpcerr.Internal)
		}
	}()
	if panicked != nil {
		panic(panicked)
	}
	if verr != nil {
		ended = true
		if ex.end(audit.ExecutionFailed, validationFailedDetails(verr), nil, rpcerr.AuditUnavailable) != nil {
			return nil, ex.unavailable()
		}
		return nil, verr
	}
	if ex.record(audit.ExecutionStarted, nil) != nil {
		// Stage-3 is not called, and a retry may run: the request key, if
		// any, is released. The execution (its PLAN_RECEIVED, if that was
		// stored) is closed once the store takes records again, by this
		// process (or, if it stops first, as interrupted).
		ended = true
		ex.release()
		ex.later(audit.ExecutionFailed, failedDetails(audit.PhaseAudit, codes.Unavailable,
			"the audit log could not record the execution's start; Stage-3 was not called"), rpcerr.AuditUnavailable)
		return nil, ex.unavailable()
	}

	exec := execution{ID: ex.ev.ExecutionID, PlanID: ex.ev.PlanID, Validated: r, Encoded: encoded}
	if ex.key != nil {
		exec.RequestID = ex.key.ID
	}
	hctx, cancel := context.WithCancel(context.WithValue(ctx, executionKey{}, exec))
	// Deferred, so that a handler that panics does not leave the
	// registration on the long-lived abort context behind.
	stopAbort := context.AfterFunc(c.abort, cancel)
	defer stopAbort()
	defer cancel()
	began := time.Now()
	resp, err := handler(hctx, req)
	latency := time.Since(began)
	ended = true
	if err != nil {
		if c.abort.Err() != nil {
			// Shut down mid-call: Stage-3 may have acted. The caller gets
			// UNKNOWN, which meshes do not retry, and the log says the same.
			err = rpcerr.New(codes.Unknown, rpcerr.OutcomeUnknown,
				"Stage-4 shut down while the plan was with Stage-3; the plan may have been executed", ex.meta())
		}
		st := status.Convert(err)
		var settle *audit.RequestOutcome
		if ex.key != nil {
			settle = errorOutcome(err)
		}
		if ex.end(audit.ExecutionFailed, c.stage3FailedDetails(st), settle, rpcerr.OutcomeUnknown) != nil {
			return nil, ex.outcomeUnknown()
		}
		return nil, err
	}
	out, _ := resp.(*stage4v1.ExecutePlanResponse)
	var settle *audit.RequestOutcome
	if ex.key != nil {
		settle = responseOutcome(resp)
	}
	completed := audit.Details{
		"step_count":        float64(len(out.GetResult().GetResults())),
		"stage3_latency_ms": math.Round(latency.Seconds()*1e6) / 1e3,
	}
	if ex.recordEnd(audit.ExecutionCompleted, completed, settle) != nil {
		// Recorded once the store is back, with a keyed digest of what
		// Stage-3 answered: its result bytes are the caller's, not the
		// log's, but the digest lets them be matched later.
		if b, err := (proto.MarshalOptions{Deterministic: true}).Marshal(out.GetResult()); err == nil {
			completed["result_digest"] = c.fp.Short(string(b))
		}
		ex.later(audit.ExecutionCompleted, completed, rpcerr.OutcomeUnknown)
		return nil, ex.outcomeUnknown()
	}
	return resp, nil
}

// safeValidate runs validate and returns its error, or the value it
// panicked with.
func safeValidate(validate ValidateFunc, r *stage4v1.ExecutePlanRequest) (err error, panicked any) {
	defer func() {
		if p := recover(); p != nil {
			panicked = p
		}
	}()
	return validate(r), nil
}

// isUserID reports whether s is a valid user_id (the rule in stage4.proto),
// which an invalid plan's events may then name verbatim.
func isUserID(s string) bool {
	if len(s) == 0 || len(s) > maxUserIDChars {
		return false
	}
	for i, c := range []byte(s) {
		alnum := c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("._@:-", rune(c))) {
			return false
		}
	}
	return true
}

// isIdentifier reports whether s is a valid trigger_type, domain or method
// (^[a-z][a-z0-9_]*$, at most 64 characters).
func isIdentifier(s string) bool {
	if len(s) == 0 || len(s) > maxIdentifierChars || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// recorder appends the events of one execution. Its context is not
// cancelled with the call: a caller that goes away must not stop the audit.
type recorder struct {
	log AuditRecorder
	ctx context.Context
	ev  audit.Event // execution_id, plan_id and user_id of every event
	// key is the request key the execution claimed, nil for a call
	// without a request_id.
	key *audit.RequestKey
}

// record appends a durable event of the execution.
func (r *recorder) record(t audit.EventType, details audit.Details) error {
	_, err := r.log.Append(r.ctx, r.event(t, details))
	return err
}

// recordEnd appends the execution's durable terminal event, which settles
// its request key (if it claimed one) with settle in the same store batch.
func (r *recorder) recordEnd(t audit.EventType, details audit.Details, settle *audit.RequestOutcome) error {
	ev := r.event(t, details)
	if r.key != nil {
		ev.Request = settle
	}
	_, err := r.log.Append(r.ctx, ev)
	return err
}

// end is recordEnd, or, when the log cannot record the terminal event now,
// hands it to the log to record late (later), saying what the caller is
// told instead (told).
func (r *recorder) end(t audit.EventType, details audit.Details, settle *audit.RequestOutcome, told stage4v1.ErrorReason) error {
	err := r.recordEnd(t, details, settle)
	if err != nil {
		r.later(t, details, told)
	}
	return err
}

// later hands the execution's terminal event to the log to record once
// its store is healthy again, with what the caller was told. The request
// key, if any, settles as the caller's answer did: released when nothing
// was sent to Stage-3 (AUDIT_UNAVAILABLE), else unknown, so that a retry
// gets what the first call got.
func (r *recorder) later(t audit.EventType, details audit.Details, told stage4v1.ErrorReason) {
	d := maps.Clone(details)
	if d == nil {
		d = audit.Details{}
	}
	d["caller_told"] = told.String()
	ev := r.event(t, d)
	if r.key != nil {
		ev.Request = unknownOutcome
		if told == rpcerr.AuditUnavailable {
			ev.Request = &audit.RequestOutcome{Release: true}
		}
	}
	r.log.AppendLater(ev)
}

// release forgets the execution's request key, if it claimed one: it was
// refused before Stage-3 could be called. A failure leaves the claim to
// be settled when the execution is closed as interrupted, or taken over
// once stale (see audit.Request.OpenUntil).
func (r *recorder) release() {
	if r.key != nil {
		_ = r.log.ReleaseRequest(r.ctx, *r.key, r.ev.ExecutionID)
	}
}

// event is an event of the execution.
func (r *recorder) event(t audit.EventType, details audit.Details) audit.Event {
	return audit.Event{
		Type:        t,
		ExecutionID: r.ev.ExecutionID,
		PlanID:      r.ev.PlanID,
		UserID:      r.ev.UserID,
		Details:     details,
	}
}

func (r *recorder) meta() map[string]string {
	return map[string]string{"execution_id": r.ev.ExecutionID}
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
// never a parameter value. A valid plan's steps are listed by name; an
// invalid plan gets counts only, and names only what passes its rule, so
// that its event stays a few hundred bytes whatever the plan.
func (c *interceptorConfig) receivedDetails(ctx context.Context, plan *stage4v1.Plan, valid bool, bd *bounder) audit.Details {
	f := audit.Details{}
	if plan != nil {
		if t := plan.GetTriggerType(); valid || isIdentifier(t) {
			f["trigger_type"] = t
		}
		f["step_count"] = float64(len(plan.GetSteps()))
		f["binding_count"] = float64(len(plan.GetDataBindings()))
		if valid {
			names := make([]any, len(plan.GetSteps()))
			for i, s := range plan.GetSteps() {
				names[i] = s.GetDomain() + "." + s.GetMethod()
			}
			f["steps"] = names
		}
		if t := plan.GetTokenHash(); t != "" {
			f["token_fingerprint"] = c.fp.Short(t)
		}
		if u := plan.GetUserId(); u != "" && !valid && !isUserID(u) {
			f["user_id_fingerprint"] = c.fp.Short(u)
		}
	}
	// The caller's trace (when it sent one, or tracing is on) leads from
	// the audit log to the spans of this call across services.
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		f["trace_id"] = sc.TraceID().String()
	}
	// The caller's correlation id (x-request-id), as Stage-3 gets it too,
	// so that an audit record leads to the caller's and Stage-3's logs.
	// Not request_id: that is the idempotency key (ExecutePlanRequest). Bounded like
	// everything a request puts here; "truncated" says when it was cut.
	if ids := metadata.ValueFromIncomingContext(ctx, "x-request-id"); len(ids) > 0 {
		f["x_request_id"] = bd.bound(ids[0], maxRequestIDChars)
	}
	if p, ok := peer.FromContext(ctx); ok {
		if p.Addr != nil {
			f["peer"] = bd.bound(p.Addr.String(), maxPeerIdentityChars)
		}
		// The same name that --audit-readers and idempotency keys use.
		if id, ok := identity.FromPeer(p); ok && id.Name() != "" {
			f["peer_identity"] = bd.bound(id.Name(), maxPeerIdentityChars)
		}
	}
	if bd.truncated {
		f["truncated"] = true
	}
	return f
}

func failedDetails(phase string, c codes.Code, msg string) audit.Details {
	var bd bounder
	f := audit.Details{
		"phase":   phase,
		"code":    code.Code(c).String(),
		"message": bd.bound(msg, maxMessageChars),
	}
	if bd.truncated {
		f["truncated"] = true
	}
	return f
}

// maxRecordedViolations is how many violations an EXECUTION_FAILED of
// phase validation names; violation_count keeps the total.
const maxRecordedViolations = 3

// validationFailedDetails describes a rejected plan by its code, its
// number of violations and the first few as field names and rule ids, e.g.
// "plan.steps.domain: string.pattern". Not by the status message or field
// paths with subscripts: those quote the plan (parameter keys, say), which
// the log never holds, and would let a hostile plan grow the log.
func validationFailedDetails(err error) audit.Details {
	st := status.Convert(err)
	f := audit.Details{
		"phase": audit.PhaseValidation,
		"code":  code.Code(st.Code()).String(),
	}
	for _, d := range st.Details() {
		vs, ok := d.(*validate.Violations)
		if !ok {
			continue
		}
		f["violation_count"] = float64(len(vs.GetViolations()))
		var names []any
		for _, v := range vs.GetViolations()[:min(len(vs.GetViolations()), maxRecordedViolations)] {
			var path []string
			for _, e := range v.GetField().GetElements() {
				path = append(path, e.GetFieldName())
			}
			var bd bounder
			names = append(names, bd.bound(strings.Join(path, ".")+": "+v.GetRuleId(), maxViolationChars))
		}
		f["violations"] = names
	}
	return f
}

// maxViolationChars bounds one recorded violation.
const maxViolationChars = 160

// stage3FailedDetails describes a failure on the way to or in Stage-3 by
// its code, its rpcerr reason and Stage-3's own code. Not by its message:
// that is Stage-3's text, which may quote parameter values (the reference
// Stage-3's json.get names the missing key, say), and the log never holds
// those. A keyed fingerprint of the message lets an investigator match the
// caller's error or Stage-3's own trail.
func (c *interceptorConfig) stage3FailedDetails(st *status.Status) audit.Details {
	f := audit.Details{
		"phase":               audit.PhaseStage3,
		"code":                code.Code(st.Code()).String(),
		"message_fingerprint": c.fp.Short(st.Message()),
	}
	if info := rpcerr.Info(st.Err()); info != nil {
		f["reason"] = info.GetReason()
		if c, ok := info.GetMetadata()["stage3_code"]; ok {
			f["stage3_code"] = c
		}
	}
	return f
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
