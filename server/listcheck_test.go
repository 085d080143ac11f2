package server

import (
	"context"
	"strings"
	"testing"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
)

// TestListRefusesWhatIsNoExecutionID: an execution_id filter that cannot
// be one (the README's placeholder pasted as it is, an id cut short or in
// capitals) is INVALID_ARGUMENT with a violation saying what an id looks
// like, rather than an empty list that reads as "no such execution"; a
// real id lists its events, and one that merely has the form lists none.
func TestListRefusesWhatIsNoExecutionID(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	res, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("x")})
	require.NoError(t, err)
	id := res.GetExecutionId()
	tests := []struct {
		name      string
		filter    string
		wantCode  codes.Code
		wantCount int
	}{
		{name: "a real id", filter: id, wantCount: 3},
		{name: "an id of the right form", filter: strings.Repeat("0", executionIDChars), wantCount: 0},
		{name: "no filter", filter: "", wantCount: 3},
		{name: "the placeholder", filter: "PASTE-EXECUTION-ID", wantCode: codes.InvalidArgument},
		{name: "cut short", filter: id[:31], wantCode: codes.InvalidArgument},
		{name: "in capitals", filter: strings.ToUpper(id), wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			list, err := h.client.ListAuditEvents(context.Background(), &stage4v1.ListAuditEventsRequest{ExecutionId: tt.filter})
			if tt.wantCode == codes.OK {
				require.NoError(t, err)
				require.Len(t, list.GetAuditEvents(), tt.wantCount)
				return
			}
			require.Equal(t, tt.wantCode, status.Code(err))
			require.Equal(t, rpcerr.InvalidListRequest, rpcerr.Reason(err))
			require.Contains(t, status.Convert(err).Message(), "execution_id: is not an execution id: 32 lowercase hex digits")
			var found bool
			for _, d := range status.Convert(err).Details() {
				if vs, ok := d.(*validate.Violations); ok {
					require.Equal(t, "execution_id.format", vs.GetViolations()[0].GetRuleId())
					found = true
				}
			}
			require.True(t, found, "a buf.validate.Violations detail")
		})
	}
}
