package server

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

const (
	received  = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED
	started   = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED
	completed = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED
	failed    = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED
)

// testFingerprinter keys the ids of every test server.
var testFingerprinter = NewFingerprinter([]byte("test fingerprint key"))

// logPath is a new log directory's path.
func logPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "audit")
}

// testSegmentBytes keeps the tests' log directories small: the default
// preallocates 64 MiB a segment.
var testSegmentBytes = segstore.WithSegmentBytes(1 << 20)

// openLog opens a log on a log directory at path, as the gateway does.
func openLog(t *testing.T, path string, opts ...segstore.Option) *audit.Log {
	t.Helper()
	store, err := segstore.Open(path, append([]segstore.Option{testSegmentBytes}, opts...)...)
	require.NoError(t, err)
	lg, err := audit.New(store)
	require.NoError(t, err)
	t.Cleanup(func() { lg.Close() })
	return lg
}

// verifyLog verifies the log directory at path behind the server's back.
func verifyLog(t *testing.T, path string) (audit.VerifyResult, error) {
	t.Helper()
	res, err := segstore.VerifyDir(path, nil)
	return res.VerifyResult, err
}

// logBytes is what the records of the log directory at path hold, one
// line each, as a reader of its segment files sees them.
func logBytes(t *testing.T, path string) []byte {
	t.Helper()
	var b []byte
	for _, line := range testkit.LogLines(t, path) {
		b = append(append(b, line...), '\n')
	}
	return b
}

// listAll pages through the whole log with the given filters, as
// ListAuditEvents returns the events.
func listAll(t *testing.T, lg *audit.Log, req *stage4v1.ListAuditEventsRequest) []*stage4v1.AuditEvent {
	t.Helper()
	f := audit.Filter{ExecutionID: req.GetExecutionId(), PlanID: req.GetPlanId(), UserID: req.GetUserId(), Type: audit.EventType(req.GetType())}
	var all []*stage4v1.AuditEvent
	token := ""
	for {
		events, next, err := lg.List(context.Background(), f, audit.MaxPageSize, token)
		require.NoError(t, err)
		for i := range events {
			ev, err := eventToProto(&events[i])
			require.NoError(t, err)
			all = append(all, ev)
		}
		if next == "" {
			return all
		}
		token = next
	}
}
