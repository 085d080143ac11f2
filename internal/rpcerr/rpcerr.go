// Package rpcerr is Stage-4's error model at the RPC boundary: every error
// it returns is a status error with a google.rpc.ErrorInfo detail whose
// domain is Domain and whose reason, a stage4.v1.ErrorReason, tells the
// caller what happened and whether a retry is safe. The README's error
// table lists them with their codes.
package rpcerr

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// Domain is the ErrorInfo domain of every Stage-4 error.
const Domain = "stage4"

// Reasons, as the constants of the generated enum, so that Go code names
// them as clients in other languages do.
const (
	PlanInvalid         = stage4v1.ErrorReason_PLAN_INVALID
	Stage3Rejected      = stage4v1.ErrorReason_STAGE3_REJECTED
	Stage3NotReached    = stage4v1.ErrorReason_STAGE3_NOT_REACHED
	OutcomeUnknown      = stage4v1.ErrorReason_OUTCOME_UNKNOWN
	AuditUnavailable    = stage4v1.ErrorReason_AUDIT_UNAVAILABLE
	InvalidPageToken    = stage4v1.ErrorReason_INVALID_PAGE_TOKEN
	InvalidListRequest  = stage4v1.ErrorReason_INVALID_LIST_REQUEST
	AuditReadFailed     = stage4v1.ErrorReason_AUDIT_READ_FAILED
	AuditReadDenied     = stage4v1.ErrorReason_AUDIT_READ_DENIED
	RequestMalformed    = stage4v1.ErrorReason_REQUEST_MALFORMED
	NoServerStream      = stage4v1.ErrorReason_NO_SERVER_STREAM
	Internal            = stage4v1.ErrorReason_INTERNAL
	NoSigningKey        = stage4v1.ErrorReason_NO_SIGNING_KEY
	NoCheckpoint        = stage4v1.ErrorReason_NO_CHECKPOINT
	InvalidProofRequest = stage4v1.ErrorReason_INVALID_PROOF_REQUEST
	BeyondTree          = stage4v1.ErrorReason_BEYOND_TREE
	RequestInProgress   = stage4v1.ErrorReason_REQUEST_IN_PROGRESS
	RequestIDReused     = stage4v1.ErrorReason_REQUEST_ID_REUSED
	RequestReadTimeout  = stage4v1.ErrorReason_REQUEST_READ_TIMEOUT
	AuditReadsBusy      = stage4v1.ErrorReason_AUDIT_READS_BUSY
)

// New returns a status error with code and msg whose details are an
// ErrorInfo (reason, Domain and the optional metadata) followed by details.
func New(code codes.Code, reason stage4v1.ErrorReason, msg string, metadata map[string]string, details ...protoadapt.MessageV1) error {
	info := &errdetails.ErrorInfo{Reason: reason.String(), Domain: Domain, Metadata: metadata}
	st, err := status.New(code, msg).WithDetails(append([]protoadapt.MessageV1{info}, details...)...)
	if err != nil {
		// Only code OK or a detail that cannot be marshalled gets here;
		// never answer with a code that the missing details would have
		// qualified.
		return status.Error(codes.Internal, "build error details")
	}
	return st.Err()
}

// Info returns the Stage-4 ErrorInfo of err, or nil when it carries none.
func Info(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info
		}
	}
	return nil
}

// Reason returns the reason of a Stage-4 error, or
// ERROR_REASON_UNSPECIFIED when err carries none, so that callers can
// classify an outcome without parsing messages. A reason this build does
// not know (a newer server's) is ERROR_REASON_UNSPECIFIED too.
func Reason(err error) stage4v1.ErrorReason {
	info := Info(err)
	if info == nil {
		return stage4v1.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	return stage4v1.ErrorReason(stage4v1.ErrorReason_value[info.GetReason()])
}
