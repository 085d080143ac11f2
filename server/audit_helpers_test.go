package server

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
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

// faultyFile fails the Write that carries its Nth record (counting from 1,
// 0 = never; a group commit writes several records at once) or its Nth
// Sync, the way a full or dying disk would. This is how other packages
// inject faults.
type faultyFile struct {
	filestore.File
	failRecordAt, failSyncAt int32
	records, writes, syncs   atomic.Int32
}

var errInjected = errors.New("injected I/O error")

func (f *faultyFile) Write(p []byte) (int, error) {
	f.writes.Add(1)
	n := int32(bytes.Count(p, []byte{'\n'}))
	last := f.records.Add(n)
	if f.failRecordAt > last-n && f.failRecordAt <= last {
		return 0, errInjected
	}
	return f.File.Write(p)
}

func (f *faultyFile) Sync() error {
	if f.syncs.Add(1) == f.failSyncAt {
		return errInjected
	}
	return f.File.Sync()
}

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
