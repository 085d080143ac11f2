// Package rpcerr is Stage-4's error model: every error it returns at the
// RPC boundary is a status error with a google.rpc.ErrorInfo detail whose
// domain is Domain and whose reason, one of the constants below, tells the
// caller what happened and whether a retry is safe. The README's error
// table lists them with their codes.
package rpcerr

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
)

// Domain is the ErrorInfo domain of every Stage-4 error.
const Domain = "stage4"

// ErrorInfo reasons, with the codes they come with.
const (
	// PlanInvalid (INVALID_ARGUMENT): validation rejected the plan; a
	// buf.validate.Violations detail lists the violations.
	PlanInvalid = "PLAN_INVALID"
	// Stage3Rejected (Stage-3's own code): Stage-3 refused the plan.
	Stage3Rejected = "STAGE3_REJECTED"
	// Stage3NotReached (UNAVAILABLE, or CANCELED by the caller): the
	// request never left Stage-4; nothing was executed.
	Stage3NotReached = "STAGE3_NOT_REACHED"
	// OutcomeUnknown (UNKNOWN, or CANCELED by the caller): Stage-3 may have
	// acted, or its outcome could not be recorded in the audit log.
	OutcomeUnknown = "OUTCOME_UNKNOWN"
	// AuditUnavailable (UNAVAILABLE): PLAN_RECEIVED or EXECUTION_STARTED
	// could not be recorded, or the log had already failed. Stage-3 was not
	// called.
	AuditUnavailable = "AUDIT_UNAVAILABLE"
	// InvalidPageToken (INVALID_ARGUMENT): a ListAuditEvents page token
	// that this log did not issue, or issued for other filters.
	InvalidPageToken = "INVALID_PAGE_TOKEN"
	// InvalidListRequest (INVALID_ARGUMENT): a ListAuditEvents request that
	// breaks its rules, such as page_size out of range.
	InvalidListRequest = "INVALID_LIST_REQUEST"
	// AuditReadFailed (UNAVAILABLE or DATA_LOSS): the log could not be read
	// back for ListAuditEvents.
	AuditReadFailed = "AUDIT_READ_FAILED"
	// AuditReadDenied (PERMISSION_DENIED): the caller's identity is not
	// allowed to read the audit log (--audit-readers).
	AuditReadDenied = "AUDIT_READ_DENIED"
	// RequestMalformed (INVALID_ARGUMENT): the request could not be decoded
	// as its message: invalid wire data, a string that is not UTF-8, or
	// nesting beyond the decoder's limit.
	RequestMalformed = "REQUEST_MALFORMED"
	// RequestReadTimeout (DEADLINE_EXCEEDED): the request did not arrive
	// whole within the server's read timeout (--request-read-timeout);
	// nothing was recorded or executed.
	RequestReadTimeout = "REQUEST_READ_TIMEOUT"
	// NoServerStream (INTERNAL): the audit interceptor ran outside a gRPC
	// server call and could not send the execution id header.
	NoServerStream = "NO_SERVER_STREAM"
	// Internal (INTERNAL): a failure of Stage-4 itself, such as the
	// validator failing to run; the message says nothing of internals.
	Internal = "INTERNAL"
)

// New returns a status error with code and msg whose details are an
// ErrorInfo (reason, Domain and the optional metadata) followed by details.
func New(code codes.Code, reason, msg string, metadata map[string]string, details ...protoadapt.MessageV1) error {
	info := &errdetails.ErrorInfo{Reason: reason, Domain: Domain, Metadata: metadata}
	st, err := status.New(code, msg).WithDetails(append([]protoadapt.MessageV1{info}, details...)...)
	if err != nil {
		// Only code OK or a detail that cannot be marshalled gets here;
		// never answer with a code that the missing details would have
		// qualified.
		return status.Error(codes.Internal, "build error details")
	}
	return st.Err()
}

// Reason returns the ErrorInfo reason of a Stage-4 error, or "" when err
// carries none, so that callers can classify an outcome without parsing
// messages.
func Reason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info.GetReason()
		}
	}
	return ""
}
