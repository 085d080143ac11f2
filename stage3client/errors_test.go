package stage3client

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
)

func TestMapError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		err            error
		sent           bool
		callerCanceled bool
		wantCode       codes.Code
		wantReason     stage4v1.ErrorReason
		wantMsg        string
		wantStage3Code string
	}{
		{name: "permission denied", err: status.Error(codes.PermissionDenied, "no"), sent: true,
			wantCode: codes.PermissionDenied, wantReason: rpcerr.Stage3Rejected, wantMsg: "stage3: no", wantStage3Code: "PermissionDenied"},
		{name: "unauthenticated", err: status.Error(codes.Unauthenticated, "who"), sent: true,
			wantCode: codes.Unauthenticated, wantReason: rpcerr.Stage3Rejected, wantMsg: "stage3: who", wantStage3Code: "Unauthenticated"},
		{name: "invalid argument", err: status.Error(codes.InvalidArgument, "bad"), sent: true,
			wantCode: codes.InvalidArgument, wantReason: rpcerr.Stage3Rejected, wantMsg: "stage3: bad", wantStage3Code: "InvalidArgument"},
		{name: "not found", err: status.Error(codes.NotFound, "gone"), sent: true,
			wantCode: codes.NotFound, wantReason: rpcerr.Stage3Rejected, wantMsg: "stage3: gone", wantStage3Code: "NotFound"},
		{name: "failed precondition", err: status.Error(codes.FailedPrecondition, "state"), sent: true,
			wantCode: codes.FailedPrecondition, wantReason: rpcerr.Stage3Rejected, wantMsg: "stage3: state", wantStage3Code: "FailedPrecondition"},
		{name: "internal after sending", err: status.Error(codes.Internal, "step 1 failed"), sent: true,
			wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown, wantStage3Code: "Internal",
			wantMsg: "outcome unknown, the plan may have run; do not retry blindly: stage3: Internal: step 1 failed"},
		{name: "unavailable after sending", err: status.Error(codes.Unavailable, "conn reset"), sent: true,
			wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown, wantStage3Code: "Unavailable",
			wantMsg: "outcome unknown, the plan may have run; do not retry blindly: stage3: Unavailable: conn reset"},
		{name: "deadline after sending", err: status.Error(codes.DeadlineExceeded, "late"), sent: true,
			wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown, wantStage3Code: "DeadlineExceeded",
			wantMsg: "outcome unknown, the plan may have run; do not retry blindly: stage3: DeadlineExceeded: late"},
		{name: "non-status error after sending", err: errors.New("EOF"), sent: true,
			wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown, wantStage3Code: "Unknown",
			wantMsg: "outcome unknown, the plan may have run; do not retry blindly: stage3: Unknown: EOF"},
		{name: "unavailable before sending", err: status.Error(codes.Unavailable, "connection refused"),
			wantCode: codes.Unavailable, wantReason: rpcerr.Stage3NotReached,
			wantMsg: "stage3 not reached, nothing was executed and a retry is safe: connection refused"},
		{name: "rejection code without a stream is still not reached", err: status.Error(codes.PermissionDenied, "sidecar"),
			wantCode: codes.Unavailable, wantReason: rpcerr.Stage3NotReached,
			wantMsg: "stage3 not reached, nothing was executed and a retry is safe: sidecar"},
		{name: "caller canceled before sending", err: status.Error(codes.Canceled, "context canceled"), callerCanceled: true,
			wantCode: codes.Canceled, wantReason: rpcerr.Stage3NotReached,
			wantMsg: "canceled by the caller before Stage-3 was reached"},
		{name: "caller canceled after sending", err: status.Error(codes.Canceled, "context canceled"), sent: true, callerCanceled: true,
			wantCode: codes.Canceled, wantReason: rpcerr.OutcomeUnknown,
			wantMsg: "canceled by the caller after the plan was sent: Stage-3 may have run it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := status.Convert(mapError(tt.err, tt.sent, tt.callerCanceled))
			require.Equal(t, tt.wantCode, got.Code())
			require.Equal(t, tt.wantMsg, got.Message())
			require.Len(t, got.Details(), 1)
			info, ok := got.Details()[0].(*errdetails.ErrorInfo)
			require.True(t, ok, "detail is %T", got.Details()[0])
			require.Equal(t, rpcerr.Domain, info.GetDomain())
			require.Equal(t, tt.wantReason.String(), info.GetReason())
			require.Equal(t, tt.wantStage3Code, info.GetMetadata()[metadataStage3Code])
		})
	}
}
