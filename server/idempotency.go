package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/identity"
	"github.com/stage4/stage4/internal/rpcerr"
)

// Idempotent ExecutePlan: a call that carries a request_id claims the key
// (caller, request_id) in the audit store before its first event, and its
// terminal event settles the key in the same store batch (see
// audit.RequestStore). A call whose key is held answers from the earlier
// execution and executes nothing. docs/DESIGN.md ("Exactly once per
// intent") has the whole design.

// HeaderReplayed is the response header of an ExecutePlan call answered
// from an earlier call with the same request_id: with that call's result
// or error, or with its unknown outcome.
const HeaderReplayed = "x-stage4-replayed"

// RetryInProgressAfter is the delay that REQUEST_IN_PROGRESS suggests in
// its google.rpc.RetryInfo and its TrailerRetryPushback: most executions
// take less.
const RetryInProgressAfter = time.Second

// TrailerRetryPushback is gRPC's server pushback trailer (gRFC A6): the
// milliseconds a client's retry policy waits before its next attempt.
const TrailerRetryPushback = "grpc-retry-pushback-ms"

// KeyOutcome is what an ExecutePlan call with a request_id did with its
// key; WithKeyObserver sees one per such call.
type KeyOutcome string

// The outcomes of a call with a request_id.
const (
	// KeyClaimed: the first call with the key; it executes as usual.
	KeyClaimed KeyOutcome = "claimed"
	// KeyReplayed: answered with the first call's result or error.
	KeyReplayed KeyOutcome = "replayed"
	// KeyOutcomeUnknown: the first call's outcome is unknown; answered
	// UNKNOWN without executing.
	KeyOutcomeUnknown KeyOutcome = "outcome_unknown"
	// KeyInProgress: the first call still runs; answered ABORTED.
	KeyInProgress KeyOutcome = "in_progress"
	// KeyReused: the key came with another plan; answered
	// FAILED_PRECONDITION.
	KeyReused KeyOutcome = "reused"
	// KeyUnavailable: the key could not be looked up; answered
	// AUDIT_UNAVAILABLE.
	KeyUnavailable KeyOutcome = "unavailable"
)

// WithKeyObserver calls f once for every ExecutePlan call with a valid
// request_id, with what the call did with its key (metrics, the call
// log). f runs on the call's goroutine and must not block.
func WithKeyObserver(f func(ctx context.Context, outcome KeyOutcome)) InterceptorOption {
	return func(c *interceptorConfig) { c.observeKey = f }
}

// WithRequestRetention sets how long a request_id is kept after its first
// call (default audit.DefaultRequestRetention): a later call with it runs
// as a first call.
func WithRequestRetention(d time.Duration) InterceptorOption {
	return func(c *interceptorConfig) { c.retention = d }
}

// RequestKeeper keeps the keys of idempotent calls; *audit.Log is the
// implementation (see audit.RequestStore).
type RequestKeeper interface {
	// ClaimRequest claims req.Key for req.ExecutionID unless a key
	// claimed at or after since holds it, and returns what holds it.
	ClaimRequest(ctx context.Context, req audit.Request, since time.Time) (audit.Request, bool, error)
	// ReleaseRequest forgets key if executionID holds it running.
	ReleaseRequest(ctx context.Context, key audit.RequestKey, executionID string) error
}

// requestKey is the key of a call: the caller is its verified client
// certificate's identity when it has one (the name --audit-readers and
// the audit events' peer_identity use), else the plan's user_id. The
// prefixes keep the two kinds apart: a user_id that spells a certificate
// name is another caller. An identity longer than maxCallerChars, which
// PLAN_RECEIVED could not hold whole, is named by its SHA-256.
func requestKey(ctx context.Context, r *stage4v1.ExecutePlanRequest) audit.RequestKey {
	if id, ok := identity.FromContext(ctx); ok && id.Name() != "" {
		name := id.Name()
		if len(name) > maxCallerChars {
			sum := sha256.Sum256([]byte(name))
			return audit.RequestKey{Caller: "cert-sha256:" + hex.EncodeToString(sum[:]), ID: r.GetRequestId()}
		}
		return audit.RequestKey{Caller: "cert:" + name, ID: r.GetRequestId()}
	}
	return audit.RequestKey{Caller: "user:" + r.GetPlan().GetUserId(), ID: r.GetRequestId()}
}

// maxCallerChars bounds the certificate identity a key names as it is.
const maxCallerChars = 512

// claimKey claims the key of a valid call with a request_id and sends the
// execution id header. When the key is held, or cannot be claimed, the
// call is answered here: done is true and resp, err are its answer.
func (c *interceptorConfig) claimKey(ctx context.Context, keeper RequestKeeper, ex *recorder, r *stage4v1.ExecutePlanRequest) (resp any, err error, done bool) {
	key := requestKey(ctx, r)
	held, claimed, cerr := keeper.ClaimRequest(ex.ctx,
		audit.Request{Key: key, PlanID: ex.ev.PlanID, ExecutionID: ex.ev.ExecutionID},
		time.Now().Add(-c.retention))
	switch {
	case cerr != nil:
		// The claim may have been stored (a lost COMMIT): forget it,
		// since this call executes nothing. If that fails too, the claim
		// is taken over once its OpenUntil has passed, its execution
		// never having reached the log.
		_ = keeper.ReleaseRequest(ex.ctx, key, ex.ev.ExecutionID)
		c.observe(ctx, KeyUnavailable)
		return nil, c.sendHeader(ctx, ex, ex.unavailable()), true
	case claimed:
		ex.key = &key
		c.observe(ctx, KeyClaimed)
		return nil, c.sendHeader(ctx, ex, nil), false
	}
	// Answered from the execution that holds the key, which the header
	// and the error's metadata name: this call executes nothing.
	first := &recorder{ev: audit.Event{ExecutionID: held.ExecutionID}}
	var outcome KeyOutcome
	switch {
	case held.PlanID != ex.ev.PlanID:
		outcome = KeyReused
		err = rpcerr.New(codes.FailedPrecondition, rpcerr.RequestIDReused, fmt.Sprintf(
			"request_id was used with another plan by execution %s; nothing was executed: use a new request_id for a new plan",
			held.ExecutionID), first.meta())
	case held.State == audit.RequestRunning:
		outcome = KeyInProgress
		err = rpcerr.New(codes.Aborted, rpcerr.RequestInProgress, fmt.Sprintf(
			"a call with this request_id is still running (execution %s); nothing was executed by this call: retry later",
			held.ExecutionID), first.meta(), &errdetails.RetryInfo{RetryDelay: durationpb.New(RetryInProgressAfter)})
		// The same delay for gRPC's own retries (a service config's
		// retryPolicy), which read server pushback from this trailer
		// rather than from RetryInfo (gRFC A6).
		_ = grpc.SetTrailer(ctx, metadata.Pairs(TrailerRetryPushback, strconv.FormatInt(RetryInProgressAfter.Milliseconds(), 10)))
	case held.State == audit.RequestDone:
		if resp, err = decodeAnswer(held.Answer); resp != nil || err != nil {
			outcome = KeyReplayed
			break
		}
		fallthrough // an answer that does not decode: the plan ran, how is not known
	default:
		outcome = KeyOutcomeUnknown
		err = rpcerr.New(codes.Unknown, rpcerr.OutcomeUnknown, fmt.Sprintf(
			"the first call with this request_id (execution %s) ended with its outcome unknown: the plan may have been executed; it is not executed again",
			held.ExecutionID), first.meta())
	}
	md := metadata.Pairs(HeaderExecutionID, held.ExecutionID)
	if outcome == KeyReplayed || outcome == KeyOutcomeUnknown {
		md.Append(HeaderReplayed, "true")
	}
	c.observe(ctx, outcome)
	if herr := grpc.SendHeader(ctx, md); herr != nil {
		return nil, rpcerr.New(codes.Internal, rpcerr.NoServerStream, "cannot send the execution id header", first.meta()), true
	}
	return resp, err, true
}

// sendHeader sends the call's own execution id header and returns err, or
// NO_SERVER_STREAM when the header cannot be sent.
func (c *interceptorConfig) sendHeader(ctx context.Context, ex *recorder, err error) error {
	if herr := grpc.SendHeader(ctx, metadata.Pairs(HeaderExecutionID, ex.ev.ExecutionID)); herr != nil {
		return rpcerr.New(codes.Internal, rpcerr.NoServerStream, "cannot send the execution id header", ex.meta())
	}
	return err
}

func (c *interceptorConfig) observe(ctx context.Context, o KeyOutcome) {
	if c.observeKey != nil {
		c.observeKey(ctx, o)
	}
}

// The encoding of an answer, which stores keep as opaque bytes: a tag,
// then the deterministic protobuf encoding of the response or of the
// google.rpc.Status of the error.
const (
	answerResponse byte = 1
	answerStatus   byte = 2
)

var deterministic = proto.MarshalOptions{Deterministic: true}

// responseOutcome is the outcome that settles the key of a call that
// succeeded: its response, to be given again.
func responseOutcome(resp any) *audit.RequestOutcome {
	m, ok := resp.(proto.Message)
	if !ok {
		return &audit.RequestOutcome{}
	}
	b, err := deterministic.MarshalAppend([]byte{answerResponse}, m)
	if err != nil {
		return &audit.RequestOutcome{}
	}
	return &audit.RequestOutcome{Answer: b}
}

// errorOutcome is the outcome that settles the key of a call that failed
// after its EXECUTION_STARTED: the key is released when the plan provably
// never left Stage-4, a refusal by Stage-3 is given again, and anything
// else (OUTCOME_UNKNOWN, a cancelled call whose plan was sent, a panic)
// leaves the outcome unknown.
func errorOutcome(err error) *audit.RequestOutcome {
	switch rpcerr.Reason(err) {
	case rpcerr.Stage3NotReached, rpcerr.PlanInvalid:
		return &audit.RequestOutcome{Release: true}
	case rpcerr.Stage3Rejected:
		b, merr := deterministic.MarshalAppend([]byte{answerStatus}, status.Convert(err).Proto())
		if merr == nil {
			return &audit.RequestOutcome{Answer: b}
		}
	}
	return &audit.RequestOutcome{}
}

// unknownOutcome settles a key whose execution's outcome is unknown.
var unknownOutcome = &audit.RequestOutcome{}

// decodeAnswer is the answer an outcome stored: a response, or the error
// with its code, message and details. Both nil when it does not decode.
func decodeAnswer(b []byte) (any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	switch b[0] {
	case answerResponse:
		resp := &stage4v1.ExecutePlanResponse{}
		if proto.Unmarshal(b[1:], resp) == nil {
			return resp, nil
		}
	case answerStatus:
		st := &spb.Status{}
		if proto.Unmarshal(b[1:], st) == nil && st.GetCode() != int32(codes.OK) {
			return nil, status.FromProto(st).Err()
		}
	}
	return nil, nil
}
