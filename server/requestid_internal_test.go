package server

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/stage4/stage4/internal/testkit"
)

// TestPlanReceivedRecordsTheRequestID: the caller's first x-request-id,
// which Stage-3 receives too, is in PLAN_RECEIVED (bounded, marked
// truncated when cut), so that an audit record leads to the caller's and
// Stage-3's logs; valid or not, the plan does not matter.
func TestPlanReceivedRecordsTheRequestID(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("r", maxRequestIDChars+10)
	tests := []struct {
		name          string
		md            metadata.MD
		want          any // nil: no x_request_id
		wantTruncated bool
	}{
		{name: "none", md: metadata.MD{}},
		{name: "one", md: metadata.Pairs("x-request-id", "req-42"), want: "req-42"},
		{name: "the first of several", md: metadata.Pairs("x-request-id", "first", "x-request-id", "second"), want: "first"},
		{name: "cut when long", md: metadata.Pairs("x-request-id", long), want: long[:maxRequestIDChars], wantTruncated: true},
	}
	for _, tt := range tests {
		for _, valid := range []bool{true, false} {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				c := &interceptorConfig{fp: testFingerprinter}
				var bd bounder
				f := c.receivedDetails(metadata.NewIncomingContext(t.Context(), tt.md), testkit.Plan(t), valid, &bd)
				got, ok := f["x_request_id"]
				require.Equal(t, tt.want != nil, ok, "x_request_id in %v", f)
				if ok {
					require.Equal(t, tt.want, got)
				}
				_, truncated := f["truncated"]
				require.Equal(t, tt.wantTruncated, truncated)
			})
		}
	}
}
