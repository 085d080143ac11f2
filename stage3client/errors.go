package stage3client

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/internal/rpcerr"
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
		return rpcerr.New(codes.Canceled, rpcerr.Stage3NotReached, "canceled by the caller before Stage-3 was reached", nil)
	case callerCanceled:
		return rpcerr.New(codes.Canceled, rpcerr.OutcomeUnknown, "canceled by the caller after the plan was sent: Stage-3 may have run it", nil)
	case !sent:
		return rpcerr.New(codes.Unavailable, rpcerr.Stage3NotReached,
			"stage3 not reached, nothing was executed and a retry is safe: "+st.Message(), nil)
	case rejections[st.Code()]:
		return rpcerr.New(st.Code(), rpcerr.Stage3Rejected, "stage3: "+st.Message(), stage3)
	default:
		return rpcerr.New(codes.Unknown, rpcerr.OutcomeUnknown,
			"outcome unknown, the plan may have run; do not retry blindly: stage3: "+st.Code().String()+": "+st.Message(), stage3)
	}
}
