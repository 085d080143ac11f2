package rpcerr

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestReason(t *testing.T) {
	t.Parallel()
	other, err := status.New(codes.Internal, "x").WithDetails(&errdetails.ErrorInfo{Domain: "other", Reason: "OTHER"})
	require.NoError(t, err)
	tests := []struct {
		name string
		err  error
		want string
	}{
		{name: "stage4 error", err: New(codes.Unknown, OutcomeUnknown, "x", nil), want: OutcomeUnknown},
		{name: "nil", err: nil, want: ""},
		{name: "plain status", err: status.Error(codes.Internal, "x"), want: ""},
		{name: "another domain", err: other.Err(), want: ""},
		{name: "not a status", err: errors.New("x"), want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, Reason(tt.err))
		})
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
	require.Equal(t, AuditUnavailable, info.GetReason())
	require.Equal(t, "e1", info.GetMetadata()["execution_id"])
	require.Equal(t, codes.Internal, status.Code(New(codes.OK, Internal, "ok is not an error", nil)))
}
