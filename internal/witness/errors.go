package witness

import (
	"errors"
	"fmt"
)

// What can come of asking a witness, as errors a caller branches on with
// errors.Is. Only ErrInconsistent says something about the log: the
// others say something about the witness, and never stop Stage-4.
var (
	// ErrDown: the witness did not answer in time, could not be reached,
	// or answered 5xx, 408 or 429. Ask again later.
	ErrDown = errors.New("witness unavailable")
	// ErrRefused: the witness answered but would not cosign, for a reason
	// that says nothing about the log's consistency (400, another 4xx, an
	// answer that is not the protocol's). Ask again later; a refusal that
	// lasts is a bug on one side.
	ErrRefused = errors.New("witness refused the checkpoint")
	// ErrMisconfigured: the witness and the policy disagree. It does not
	// know the log's origin or key (403, 404), its cosignature does not
	// verify with the policy's key, or it redirects (a wrong URL). An
	// operator must fix the policy or the witness; until then the witness
	// counts as refusing.
	ErrMisconfigured = errors.New("witness and policy disagree")
	// ErrInconsistent: the witness holds a tree that the checkpoint does
	// not extend: the consistency proof from the size it holds does not
	// verify (422), it holds a larger tree (409 with a larger size), or a
	// different tree of the same size. Either the log forked or was rolled
	// back, or someone signed a different tree with its key: fail closed.
	ErrInconsistent = errors.New("witness holds a tree inconsistent with the checkpoint")
	// ErrQuorumNotMet: the cosignatures gathered or found do not meet the
	// policy's quorum.
	ErrQuorumNotMet = errors.New("cosignatures do not meet the witness policy's quorum")
)

// Error is what came of asking one witness when it did not cosign.
// errors.Is(err, Kind) holds, and so does errors.Is(err, target) for
// whatever Err wraps (context.DeadlineExceeded, a net error).
type Error struct {
	// Witness is the witness's name in the policy.
	Witness string
	// Kind is ErrDown, ErrRefused, ErrMisconfigured or ErrInconsistent.
	Kind error
	// Err says what happened.
	Err error
	// Ahead is, when Kind is ErrInconsistent because the witness holds a
	// larger tree than the checkpoint's, that tree's size (else 0).
	// Several writers of one log (replicas) race for the witness: one
	// whose checkpoint a newer one overtook sees this, and a log whose
	// tree has grown to that size signs anew rather than failing closed.
	Ahead uint64
}

func (e *Error) Error() string { return fmt.Sprintf("witness %s: %v: %v", e.Witness, e.Kind, e.Err) }

// Unwrap returns Kind and Err.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// Status is the kind of what came of asking one witness, as a short word
// for metric labels and logs.
type Status int

// The statuses, one per error kind.
const (
	// StatusCosigned: the witness cosigned, and its cosignature verifies.
	StatusCosigned Status = iota
	// StatusDown: ErrDown.
	StatusDown
	// StatusRefused: ErrRefused.
	StatusRefused
	// StatusMisconfigured: ErrMisconfigured.
	StatusMisconfigured
	// StatusInconsistent: ErrInconsistent.
	StatusInconsistent
	// StatusError: the request was not made or not finished for a reason
	// of Stage-4's own (a consistency proof it could not make, the
	// caller's context ending).
	StatusError
)

var statusNames = [...]string{"cosigned", "down", "refused", "misconfigured", "inconsistent", "error"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// StatusOf returns the status of what a request ended with: nil is
// StatusCosigned.
func StatusOf(err error) Status {
	switch {
	case err == nil:
		return StatusCosigned
	case errors.Is(err, ErrInconsistent):
		return StatusInconsistent
	case errors.Is(err, ErrMisconfigured):
		return StatusMisconfigured
	case errors.Is(err, ErrRefused):
		return StatusRefused
	case errors.Is(err, ErrDown):
		return StatusDown
	default:
		return StatusError
	}
}
