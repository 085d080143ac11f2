package audit

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every Stage-4 error.
const ErrorDomain = "stage4"

// ErrorInfo reasons of the errors this package returns at the RPC boundary.
const (
	// ReasonAuditUnavailable (UNAVAILABLE): PLAN_RECEIVED or
	// EXECUTION_STARTED could not be recorded, or the log had already
	// failed. Stage-3 was not called.
	ReasonAuditUnavailable = "AUDIT_UNAVAILABLE"
	// ReasonOutcomeUnknown (UNKNOWN): Stage-3 was called but its outcome
	// could not be recorded, so it is withheld. The plan may have run.
	ReasonOutcomeUnknown = "OUTCOME_UNKNOWN"
	// ReasonInvalidPageToken (INVALID_ARGUMENT): a ListAuditEvents page
	// token that this log did not issue, or issued for other filters.
	ReasonInvalidPageToken = "INVALID_PAGE_TOKEN"
	// ReasonInvalidListRequest (INVALID_ARGUMENT): a ListAuditEvents
	// page_size or type out of range.
	ReasonInvalidListRequest = "INVALID_LIST_REQUEST"
	// ReasonAuditReadFailed (UNAVAILABLE or DATA_LOSS): the log could not
	// be read back for ListAuditEvents.
	ReasonAuditReadFailed = "AUDIT_READ_FAILED"
	// ReasonNoServerStream (INTERNAL): the interceptor ran outside a gRPC
	// server call and could not send the execution id header.
	ReasonNoServerStream = "NO_SERVER_STREAM"
)

// statusError builds a status error with an ErrorInfo detail; metadata is
// optional key/value pairs.
func statusError(c codes.Code, reason, msg string, metadata map[string]string) error {
	st := status.New(c, msg)
	// WithDetails fails only for code OK, which is never passed here.
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: metadata}); err == nil {
		st = d
	}
	return st.Err()
}
