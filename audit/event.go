package audit

import (
	"strconv"
	"strings"
	"time"
)

// EventType is the kind of an audit event. Its values and names are those
// of stage4.v1.AuditEventType, which the record format uses; package
// server converts between the two at the RPC edge.
type EventType int32

// The event types of an execution's lifecycle.
const (
	// TypeUnspecified is no type; as a filter it matches every type.
	TypeUnspecified EventType = 0
	// PlanReceived: a plan was received, valid or not. The first event of
	// every execution.
	PlanReceived EventType = 1
	// ExecutionStarted: the plan passed validation and is about to be
	// forwarded to Stage-3. Durable before Stage-3 is called.
	ExecutionStarted EventType = 2
	// ExecutionCompleted: Stage-3 executed the plan. Terminal.
	ExecutionCompleted EventType = 3
	// ExecutionFailed: the execution failed; details.phase says where.
	// Terminal.
	ExecutionFailed EventType = 4
)

// typeNames are the record format's names of the defined types.
var typeNames = [...]string{
	TypeUnspecified:    "AUDIT_EVENT_TYPE_UNSPECIFIED",
	PlanReceived:       "AUDIT_EVENT_TYPE_PLAN_RECEIVED",
	ExecutionStarted:   "AUDIT_EVENT_TYPE_EXECUTION_STARTED",
	ExecutionCompleted: "AUDIT_EVENT_TYPE_EXECUTION_COMPLETED",
	ExecutionFailed:    "AUDIT_EVENT_TYPE_EXECUTION_FAILED",
}

// String returns the type's name as records carry it, such as
// "AUDIT_EVENT_TYPE_PLAN_RECEIVED"; an undefined type is rendered as its
// number.
func (t EventType) String() string {
	if t.Defined() {
		return typeNames[t]
	}
	return "AUDIT_EVENT_TYPE(" + strconv.Itoa(int(t)) + ")"
}

// Defined reports whether t is one of the types above (UNSPECIFIED
// included, which filters use).
func (t EventType) Defined() bool { return t >= 0 && int(t) < len(typeNames) }

// Terminal reports whether events of type t end an execution.
func (t EventType) Terminal() bool { return t == ExecutionCompleted || t == ExecutionFailed }

// ParseEventType returns the type a record names; ok is false for any
// other name, UNSPECIFIED included (no record has it).
func ParseEventType(name string) (t EventType, ok bool) {
	if !strings.HasPrefix(name, "AUDIT_EVENT_TYPE_") {
		return 0, false
	}
	for i := PlanReceived; i <= ExecutionFailed; i++ {
		if typeNames[i] == name {
			return i, true
		}
	}
	return 0, false
}

// Details are an event's facts: a JSON object whose values are string,
// float64, bool, nil, []any and Details (or map[string]any), as
// encoding/json decodes them. Records hold them with their keys in byte
// order. They never hold token_hash or parameter values.
type Details = map[string]any

// Event is one audit event. An author fills Type, the ids and Details and
// gives it to Log.Append; the log sets Sequence, Time, PreviousHash and
// Hash as it writes the record, and List returns events with all of them.
type Event struct {
	// Sequence is the record's position in the log: gapless from 1.
	Sequence uint64
	// Time is when the record was written.
	Time time.Time
	// Type is the kind of event.
	Type EventType
	// ExecutionID is the ExecutePlan call the event belongs to.
	ExecutionID string
	// PlanID is the plan's keyed digest, when the request carried a plan.
	PlanID string
	// UserID is the plan's user, when valid.
	UserID string
	// Details are the event's facts.
	Details Details
	// PreviousHash and Hash are the record's chain members ("sha256:"
	// and 64 hex digits).
	PreviousHash string
	Hash         string
	// Request, on a terminal event of an execution that claimed a request
	// key, says how the key is settled (Record.Request); it is stored
	// beside the record, never in it, and List does not return it.
	Request *RequestOutcome
}

// Phases of an EXECUTION_FAILED event, in details.phase.
const (
	// PhaseValidation: the plan was invalid; Stage-3 was not called.
	PhaseValidation = "validation"
	// PhaseStage3: the handler, that is Stage-3 or the way to it, returned
	// an error.
	PhaseStage3 = "stage3"
	// PhaseInternal: the validator or the handler panicked.
	PhaseInternal = "internal"
	// PhaseAudit: the audit log could not record the execution's start
	// (EXECUTION_STARTED); Stage-3 was not called. Recorded late, once
	// the store took records again.
	PhaseAudit = "audit"
	// PhaseInterrupted: the Stage-4 process running the execution stopped
	// before it ended; written by the log when its store hands the
	// execution out (Store.Interrupted). After EXECUTION_STARTED the plan
	// may have run.
	PhaseInterrupted = "interrupted"
)

// Filter selects events; empty members match everything, set ones are
// combined with AND.
type Filter struct {
	// ExecutionID, PlanID and UserID, when not empty, must equal the
	// event's members of those names.
	ExecutionID string
	PlanID      string
	UserID      string
	// Type, unless TypeUnspecified, must equal the event's type.
	Type EventType
}

// Matches reports whether ev passes f.
func (f *Filter) Matches(ev *Event) bool {
	return (f.ExecutionID == "" || f.ExecutionID == ev.ExecutionID) &&
		(f.PlanID == "" || f.PlanID == ev.PlanID) &&
		(f.UserID == "" || f.UserID == ev.UserID) &&
		(f.Type == TypeUnspecified || f.Type == ev.Type)
}

// Empty reports whether f matches every event.
func (f *Filter) Empty() bool { return *f == Filter{} }
