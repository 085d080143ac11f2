package audit

import (
	"context"
	"fmt"
	"time"
)

// Idempotent executions: a caller that sets a request_id names its intent,
// and a retry with the same key must not execute the plan again. The store
// that keeps the log keeps the keys too (RequestStore), so that every
// replica of a shared store answers alike and the mapping survives
// restarts; the replayable answers live beside the records, never in them,
// since they hold Stage-3's results (user data) and the records must not.
//
// A key's life: ClaimRequest records it as running before the execution's
// first event is appended; the execution's terminal record settles it in
// the same atomic batch (Record.Request): done with an answer, unknown, or
// forgotten (Stage-3 was not called). A refusal before any event
// (ReleaseRequest) forgets it too. After the retention it is forgotten
// (ClaimRequest's since) and purged (PurgeRequests).

// RequestKey names one intent of one caller.
type RequestKey struct {
	// Caller is who sent the request, as the server names callers (by the
	// kind of proof and the name), so that keys of two callers never meet.
	Caller string
	// ID is the caller's request_id.
	ID string
}

// String renders the key for messages.
func (k RequestKey) String() string { return fmt.Sprintf("%q/%q", k.Caller, k.ID) }

// RequestState is where the execution that holds a key stands.
type RequestState uint8

const (
	// RequestRunning: the execution that claimed the key has not ended,
	// or its end could not be recorded yet.
	RequestRunning RequestState = 1
	// RequestDone: the execution ended with an answer that a retry gets
	// again (Request.Answer).
	RequestDone RequestState = 2
	// RequestUnknown: the execution ended with its outcome unknown (Stage-3
	// may have acted); a retry is told so and never executes.
	RequestUnknown RequestState = 3
)

// String returns the state's name as stores keep it.
func (s RequestState) String() string {
	switch s {
	case RequestRunning:
		return "running"
	case RequestDone:
		return "done"
	case RequestUnknown:
		return "unknown"
	}
	return fmt.Sprintf("RequestState(%d)", uint8(s))
}

// ParseRequestState is the inverse of String; ok is false for other names.
func ParseRequestState(name string) (s RequestState, ok bool) {
	for _, s := range []RequestState{RequestRunning, RequestDone, RequestUnknown} {
		if s.String() == name {
			return s, true
		}
	}
	return 0, false
}

// Request is what a store keeps for a key.
type Request struct {
	// Key is the caller's key.
	Key RequestKey
	// PlanID is the plan_id of the claiming call: a key that comes back
	// with another plan is a mistake the caller is told about.
	PlanID string
	// ExecutionID is the execution that claimed the key.
	ExecutionID string
	// State is where that execution stands.
	State RequestState
	// Answer is the answer of a done execution, in the server's encoding,
	// which stores do not interpret. It may hold Stage-3's result (user
	// data), up to the largest message Stage-4 accepts.
	Answer []byte
	// Claimed is when the key was claimed; the key is forgotten once the
	// retention has passed since.
	Claimed time.Time
	// OpenUntil is the latest time at which the claiming process may still
	// be running its execution, as Record.OpenUntil. A running claim whose
	// OpenUntil (and a shared store's grace period) has passed while its
	// execution is not open in the log never reached the log, and Stage-3
	// was never called for it: the next claim of its key takes it over.
	OpenUntil time.Time
}

// RequestOutcome settles the key of an execution. It rides on the
// execution's terminal event (Event.Request, Record.Request), so that the
// store records the end and the answer in one atomic batch.
type RequestOutcome struct {
	// Release forgets the key: Stage-3 was not called, and a retry runs as
	// a first call.
	Release bool
	// Answer, when not nil, is what a retry gets (State RequestDone); nil
	// without Release is an unknown outcome (RequestUnknown).
	Answer []byte
}

// RequestStore keeps the keys of idempotent executions beside a log's
// records. Every Store is one; the rules, each tested by audit/storetest
// (Run), are:
//
//  1. Exactly one claim wins: of concurrent claims of one key (on every
//     replica of a shared store), one returns claimed, and the others get
//     the winner's Request. (ConcurrentClaimsOneWins, ClaimOnce)
//  2. Keys survive a restart: running, settled (done with its answer,
//     unknown) or released, as they were at Close. A crash keeps every
//     key whose execution has a durable record, as claimed by it or
//     settled; an answer written less than a second before a crash of the
//     machine may be lost, and its key is then unknown. A claim whose
//     execution has no durable record never reached Stage-3, and may be
//     lost. (ClaimsSurviveRestart)
//  3. A terminal record with a Request settles the running claim of its
//     execution, in the same batch, and no other claim.
//     (TerminalRecordSettlesItsKey, SettlesOnlyItsOwnClaim)
//  4. A key claimed before since is forgotten: ClaimRequest takes it
//     over; PurgeRequests removes what was claimed before its time.
//     (ExpiredKeysAreForgotten)
//  5. A running claim whose OpenUntil (plus the store's grace period on a
//     shared store) has passed while its execution is not open in the log
//     is taken over. (StaleClaimIsTakenOver)
//  6. ctx bounds every call; calls after Close fail with ErrClosed; an
//     error wrapping ErrUnavailable means nothing was claimed.
//     (RequestCallsAfterClose, RequestCallsBoundedByContext)
type RequestStore interface {
	// ClaimRequest records req (State RequestRunning) for req.Key unless
	// the store holds the key already, claimed at or after since. It
	// returns the Request the store holds afterwards and whether it is
	// req's.
	ClaimRequest(ctx context.Context, req Request, since time.Time) (held Request, claimed bool, err error)
	// ReleaseRequest forgets key if executionID holds it and it is
	// running: that execution was refused before Stage-3 could be called.
	ReleaseRequest(ctx context.Context, key RequestKey, executionID string) error
	// PurgeRequests removes the keys claimed before before.
	PurgeRequests(ctx context.Context, before time.Time) error
}

// The details of a PLAN_RECEIVED event that name the request key its
// execution claimed. They let a store that keeps keys beside its records
// find a key again from the records after a crash (segstore).
const (
	// DetailRequestID is the call's request_id.
	DetailRequestID = "request_id"
	// DetailRequestCaller is the key's caller (RequestKey.Caller).
	DetailRequestCaller = "request_caller"
)

// RequestKeyOf returns the request key that ev, a PLAN_RECEIVED event,
// names in its details; ok is false when it names none.
func RequestKeyOf(ev *Event) (k RequestKey, ok bool) {
	if ev.Type != PlanReceived {
		return k, false
	}
	k.ID, _ = ev.Details[DetailRequestID].(string)
	k.Caller, _ = ev.Details[DetailRequestCaller].(string)
	return k, k.ID != "" && k.Caller != ""
}

// DefaultRequestRetention is how long a key is kept by default: Stripe's
// 24 hours, over AIP-155's one hour at least.
const DefaultRequestRetention = 24 * time.Hour

// MinRequestRetention is the shortest retention serve accepts: AIP-155's
// "at least 60 minutes".
const MinRequestRetention = time.Hour

// ClaimRequest claims req.Key for the execution req.ExecutionID, or
// returns the Request that holds it (see RequestStore). It sets
// req.Claimed and req.OpenUntil (the log's WithOpenFor) when they are
// zero, and bounds the call by the append timeout.
func (l *Log) ClaimRequest(ctx context.Context, req Request, since time.Time) (Request, bool, error) {
	if l.isClosed() {
		return Request{}, false, ErrClosed
	}
	now := time.Now()
	if req.Claimed.IsZero() {
		req.Claimed = now
	}
	if req.OpenUntil.IsZero() {
		req.OpenUntil = now.Add(l.cfg.openFor)
	}
	req.State, req.Answer = RequestRunning, nil
	ctx, cancel := context.WithTimeout(ctx, l.cfg.appendTimeout)
	defer cancel()
	held, claimed, err := l.store.ClaimRequest(ctx, req, since)
	if err != nil {
		return Request{}, false, fmt.Errorf("claim request %s: %w", req.Key, err)
	}
	return held, claimed, nil
}

// ReleaseRequest forgets key if executionID still holds it running.
func (l *Log) ReleaseRequest(ctx context.Context, key RequestKey, executionID string) error {
	if l.isClosed() {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, l.cfg.appendTimeout)
	defer cancel()
	if err := l.store.ReleaseRequest(ctx, key, executionID); err != nil {
		return fmt.Errorf("release request %s: %w", key, err)
	}
	return nil
}

// PurgeRequests removes the keys claimed before before.
func (l *Log) PurgeRequests(ctx context.Context, before time.Time) error {
	if l.isClosed() {
		return ErrClosed
	}
	if err := l.store.PurgeRequests(ctx, before); err != nil {
		return fmt.Errorf("purge requests: %w", err)
	}
	return nil
}
