package server

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

const (
	received  = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED
	started   = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED
	completed = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED
	failed    = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED
)

// testFingerprinter keys the ids of every test server.
var testFingerprinter = NewFingerprinter([]byte("test fingerprint key"))

func logPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "audit.jsonl")
}

// openLog opens a log on a file store at path, as the gateway does.
func openLog(t *testing.T, path string, opts ...filestore.Option) *audit.Log {
	t.Helper()
	store, err := filestore.Open(path, opts...)
	require.NoError(t, err)
	lg, err := audit.New(store)
	require.NoError(t, err)
	t.Cleanup(func() { lg.Close() })
	return lg
}

// listAll pages through the whole log with the given filters.
func listAll(t *testing.T, lg *audit.Log, req *stage4v1.ListAuditEventsRequest) []*stage4v1.AuditEvent {
	t.Helper()
	q := audit.Query{ExecutionID: req.GetExecutionId(), PlanID: req.GetPlanId(), UserID: req.GetUserId(), Type: req.GetType(), PageSize: audit.MaxPageSize}
	var all []*stage4v1.AuditEvent
	for {
		page, err := lg.List(context.Background(), q)
		require.NoError(t, err)
		all = append(all, page.Events...)
		if page.NextPageToken == "" {
			return all
		}
		q.PageToken = page.NextPageToken
	}
}
