package rpcerr

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

func TestReason(t *testing.T) {
	t.Parallel()
	other, err := status.New(codes.Internal, "x").WithDetails(&errdetails.ErrorInfo{Domain: "other", Reason: "OTHER"})
	require.NoError(t, err)
	newer, err := status.New(codes.Internal, "x").WithDetails(&errdetails.ErrorInfo{Domain: Domain, Reason: "A_REASON_FROM_A_NEWER_SERVER"})
	require.NoError(t, err)
	tests := []struct {
		name string
		err  error
		want stage4v1.ErrorReason
	}{
		{name: "stage4 error", err: New(codes.Unknown, OutcomeUnknown, "x", nil), want: OutcomeUnknown},
		{name: "nil", err: nil},
		{name: "plain status", err: status.Error(codes.Internal, "x")},
		{name: "another domain", err: other.Err()},
		{name: "an unknown reason", err: newer.Err()},
		{name: "not a status", err: errors.New("x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, Reason(tt.err))
		})
	}
}

// TestReasonsTravelByName: the reason on the wire is the enum value's
// name, unchanged from the strings clients matched before the enum.
func TestReasonsTravelByName(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		reason stage4v1.ErrorReason
		wire   string
	}{
		{PlanInvalid, "PLAN_INVALID"},
		{AuditUnavailable, "AUDIT_UNAVAILABLE"},
		{OutcomeUnknown, "OUTCOME_UNKNOWN"},
		{BeyondTree, "BEYOND_TREE"},
	} {
		require.Equal(t, tt.wire, Info(New(codes.Unavailable, tt.reason, "x", nil)).GetReason())
	}
}

func TestNewCarriesErrorInfoThenDetails(t *testing.T) {
	t.Parallel()
	err := New(codes.Unavailable, AuditUnavailable, "log failed", map[string]string{"execution_id": "e1"}, &errdetails.BadRequest{})
	st := status.Convert(err)
	require.Equal(t, codes.Unavailable, st.Code())
	require.Equal(t, "log failed", st.Message())
	require.Len(t, st.Details(), 2)
	info, ok := st.Details()[0].(*errdetails.ErrorInfo)
	require.True(t, ok)
	require.Equal(t, Domain, info.GetDomain())
	require.Equal(t, "AUDIT_UNAVAILABLE", info.GetReason())
	require.Equal(t, "e1", info.GetMetadata()["execution_id"])
	require.Equal(t, codes.Internal, status.Code(New(codes.OK, Internal, "ok is not an error", nil)))
}
