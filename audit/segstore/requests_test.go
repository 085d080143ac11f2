package segstore_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
)

// claimKey claims key for exec and returns what the store holds.
func claimKey(t *testing.T, s *segstore.Store, key audit.RequestKey, exec string) (audit.Request, bool) {
	t.Helper()
	now := time.Now()
	held, claimed, err := s.ClaimRequest(context.Background(),
		audit.Request{Key: key, PlanID: "plan", ExecutionID: exec, Claimed: now, OpenUntil: now.Add(time.Hour)}, time.Time{})
	require.NoError(t, err)
	return held, claimed
}

// journals returns the request journal's files.
func journals(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, segstore.RequestsDir, "*.req"))
	require.NoError(t, err)
	return files
}

// TestRequestJournalAfterACrash: what Open makes of the journal that a
// stopped process left: a torn last entry is cut; a running claim whose
// execution never reached the log is forgotten; one whose execution was
// closed but whose settling entry was lost is unknown; one whose
// execution is open stays running for the sweep to settle.
func TestRequestJournalAfterACrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir)
	never := audit.RequestKey{Caller: "user:alice", ID: "never-logged"}
	closed := audit.RequestKey{Caller: "user:alice", ID: "closed"}
	open_ := audit.RequestKey{Caller: "user:alice", ID: "open"}
	for key, exec := range map[audit.RequestKey]string{never: "e-never", closed: "e-closed", open_: "e-open"} {
		_, claimed := claimKey(t, s, key, exec)
		require.True(t, claimed)
	}
	appendEvent(t, s, true, audit.Event{Type: received, ExecutionID: "e-open"})
	appendEvent(t, s, true, audit.Event{Type: started, ExecutionID: "e-open"})
	// The closing record, without the Request that would settle its key:
	// as if the journal lost that entry in a crash.
	appendEvent(t, s, true, audit.Event{Type: received, ExecutionID: "e-closed"})
	appendEvent(t, s, true, audit.Event{Type: completed, ExecutionID: "e-closed"})
	require.NoError(t, s.Close())
	files := journals(t, dir)
	require.Len(t, files, 1)
	// A torn entry where the next would go: at the first of the zeros
	// that the file is preallocated with.
	data, err := os.ReadFile(files[0])
	require.NoError(t, err)
	end := bytes.IndexByte(data, 0)
	require.Positive(t, end)
	f, err := os.OpenFile(files[0], os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte(`{"caller":"user:alice","request_id":"torn","st`), int64(end))
	require.NoError(t, err)
	require.NoError(t, f.Close())

	s = open(t, dir)
	data, err = os.ReadFile(files[0])
	require.NoError(t, err)
	require.False(t, bytes.Contains(data, []byte(`"torn"`)), "the torn entry was cleared")
	_, claimed := claimKey(t, s, never, "retry")
	require.True(t, claimed, "a claim whose execution never reached the log is forgotten")
	held, claimed := claimKey(t, s, closed, "retry")
	require.False(t, claimed)
	require.Equal(t, audit.RequestUnknown, held.State, "the execution ran its course: its outcome is unknown")
	require.Equal(t, "e-closed", held.ExecutionID)
	held, claimed = claimKey(t, s, open_, "retry")
	require.False(t, claimed)
	require.Equal(t, audit.RequestRunning, held.State, "open until the sweep closes it")
	require.Equal(t, []audit.OpenExecution{{ExecutionID: "e-open", LastType: started, Sequence: 1}}, must(s.Interrupted(context.Background())))
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestRequestJournalPurge: PurgeRequests removes the journal files of
// hours past the retention and forgets their keys; Open reads the files
// left.
func TestRequestJournalPurge(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir)
	recent := audit.RequestKey{Caller: "user:alice", ID: "recent"}
	_, claimed := claimKey(t, s, recent, "e-recent")
	require.True(t, claimed)
	appendEvent(t, s, true, audit.Event{Type: received, ExecutionID: "e-recent"})
	require.NoError(t, s.Close())
	// An entry of two days ago, in its hour's file.
	old := time.Now().Add(-48 * time.Hour).UTC()
	oldFile := filepath.Join(dir, segstore.RequestsDir, old.Format(segstore.RequestsFileLayout)+".req")
	require.NoError(t, os.WriteFile(oldFile, []byte(`{"caller":"user:alice","request_id":"old","plan_id":"plan","execution_id":"e-old",`+
		`"state":"unknown","claimed":"`+old.Format(time.RFC3339Nano)+`","open_until":"`+old.Format(time.RFC3339Nano)+`"}`+"\n"), 0o600))

	s = open(t, dir)
	require.Len(t, journals(t, dir), 2)
	held, claimed := claimKey(t, s, audit.RequestKey{Caller: "user:alice", ID: "old"}, "e-probe")
	require.False(t, claimed, "Open read the old file")
	require.Equal(t, audit.RequestUnknown, held.State)
	require.NoError(t, s.PurgeRequests(context.Background(), time.Now().Add(-24*time.Hour)))
	require.NoFileExists(t, oldFile)
	require.Len(t, journals(t, dir), 1)
	held, claimed = claimKey(t, s, recent, "e-probe")
	require.False(t, claimed, "a key within the retention is kept")
	require.Equal(t, "e-recent", held.ExecutionID)
}

// countingFile counts the syncs of the files it wraps.
type countingFile struct {
	segstore.File
	syncs *atomic.Int64
}

func (f *countingFile) Sync() error {
	f.syncs.Add(1)
	return f.File.Sync()
}

// TestRequestJournalSyncsWithDurableAppends: a claim costs no sync of its
// own; the next durable append syncs the journal with its segment, and a
// durable append without a claim syncs the segment alone.
func TestRequestJournalSyncsWithDurableAppends(t *testing.T) {
	t.Parallel()
	var syncs atomic.Int64
	s := open(t, t.TempDir(), segstore.WithFileWrapper(func(f segstore.File) segstore.File {
		return &countingFile{File: f, syncs: &syncs}
	}))
	appendEvent(t, s, true, audit.Event{Type: received, ExecutionID: "warm-up"})
	syncs.Store(0)
	_, claimed := claimKey(t, s, audit.RequestKey{Caller: "user:alice", ID: "k"}, "e")
	require.True(t, claimed)
	require.Zero(t, syncs.Load(), "a claim is not synced on its own")
	appendEvent(t, s, false, audit.Event{Type: received, ExecutionID: "e"})
	require.Zero(t, syncs.Load())
	appendEvent(t, s, true, audit.Event{Type: started, ExecutionID: "e"})
	require.Equal(t, int64(2), syncs.Load(), "the segment and the journal")
	appendEvent(t, s, true, audit.Event{Type: completed, ExecutionID: "e"})
	require.Equal(t, int64(3), syncs.Load(), "the segment alone: nothing new in the journal")
}
