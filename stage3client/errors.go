package stage3client

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every Stage-4 error.
const ErrorDomain = "stage4"

// ErrorInfo reasons set by Execute; see the package doc for their codes.
const (
	ReasonPlanInvalid      = "PLAN_INVALID"
	ReasonStage3Rejected   = "STAGE3_REJECTED"
	ReasonStage3NotReached = "STAGE3_NOT_REACHED"
	ReasonOutcomeUnknown   = "OUTCOME_UNKNOWN"
)

// metadataStage3Code is the ErrorInfo metadata key holding the code Stage-3
// returned, so that the audit log keeps it after the code is mapped.
const metadataStage3Code = "stage3_code"

// rejections are the codes with which Stage-3 refuses a plan; they pass
// through unchanged. Every other code from Stage-3 means the outcome is
// unknown.
var rejections = map[codes.Code]bool{
	codes.PermissionDenied:   true,
	codes.Unauthenticated:    true,
	codes.InvalidArgument:    true,
	codes.NotFound:           true,
	codes.FailedPrecondition: true,
}

// mapError turns the error of one Stage-3 call into Stage-4's error. sent
// says whether the plan may have reached Stage-3; callerCanceled whether the
// caller of Execute cancelled its own context.
func mapError(err error, sent, callerCanceled bool) error {
	st := status.Convert(err)
	stage3 := map[string]string{metadataStage3Code: st.Code().String()}
	switch {
	case callerCanceled && !sent:
		return newError(codes.Canceled, ReasonStage3NotReached, nil, "canceled by the caller before Stage-3 was reached")
	case callerCanceled:
		return newError(codes.Canceled, ReasonOutcomeUnknown, nil, "canceled by the caller after the plan was sent: Stage-3 may have run it")
	case !sent:
		return newError(codes.Unavailable, ReasonStage3NotReached, nil,
			"stage3 not reached, nothing was executed and a retry is safe: "+st.Message())
	case rejections[st.Code()]:
		return newError(st.Code(), ReasonStage3Rejected, stage3, "stage3: "+st.Message())
	default:
		return newError(codes.Unknown, ReasonOutcomeUnknown, stage3,
			"outcome unknown, the plan may have run; do not retry blindly: stage3: "+st.Code().String()+": "+st.Message())
	}
}

func newError(code codes.Code, reason string, md map[string]string, msg string) error {
	st := status.New(code, msg)
	// WithDetails fails only for codes.OK, which is never passed here.
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: md}); err == nil {
		st = withInfo
	}
	return st.Err()
}

// Reason returns the ErrorInfo reason of a Stage-4 error, or "" when err
// carries none, so callers such as the audit log can classify an outcome
// without parsing messages.
func Reason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}
