package segstore_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
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

// heldJournalFile holds the syncs of the request journal's files until
// release is closed, and says on synced when one began.
type heldJournalFile struct {
	segstore.File
	synced  chan struct{}
	release chan struct{}
}

func (f *heldJournalFile) Sync() error {
	select {
	case f.synced <- struct{}{}:
	default:
	}
	<-f.release
	return f.File.Sync()
}

// TestRequestJournalSyncsInTheBackground: a claim and its settlement cost
// an execution no sync: its durable appends return while the journal's
// sync is held, and the journal is synced in the background.
func TestRequestJournalSyncsInTheBackground(t *testing.T) {
	t.Parallel()
	synced, release := make(chan struct{}, 1), make(chan struct{})
	s := open(t, t.TempDir(), segstore.WithFileWrapper(func(f segstore.File) segstore.File {
		if osf, ok := f.(*os.File); ok && strings.Contains(osf.Name(), string(filepath.Separator)+segstore.RequestsDir+string(filepath.Separator)) {
			return &heldJournalFile{File: f, synced: synced, release: release}
		}
		return f
	}))
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	k := audit.RequestKey{Caller: "user:alice", ID: "k"}
	_, claimed := claimKey(t, s, k, "e")
	require.True(t, claimed)
	appendEvent(t, s, false, keyedReceived("e", k))
	appendEvent(t, s, true, audit.Event{Type: started, ExecutionID: "e"})
	done := audit.Event{Type: completed, ExecutionID: "e", Request: &audit.RequestOutcome{Answer: []byte("answer")}}
	appendEvent(t, s, true, done) // returned: the journal's sync did not hold it
	select {
	case <-synced: // the background sync began, and is held
	case <-time.After(30 * time.Second):
		t.Fatal("the journal was not synced in the background")
	}
	close(release)
	held, claimed := claimKey(t, s, k, "retry")
	require.False(t, claimed)
	require.Equal(t, []byte("answer"), held.Answer)
}

// keyedReceived is the PLAN_RECEIVED of an execution that claimed k, as
// the server writes it.
func keyedReceived(exec string, k audit.RequestKey) audit.Event {
	return audit.Event{Type: received, ExecutionID: exec, PlanID: "plan",
		Details: audit.Details{audit.DetailRequestID: k.ID, audit.DetailRequestCaller: k.Caller}}
}

// TestRequestJournalLostInACrash: when the machine crashes before the
// journal's background sync, Open finds the keys in the active segment's
// PLAN_RECEIVED records: a key whose execution ended is unknown (its
// answer is lost, never the fact that the plan ran), one whose execution
// is open is held until the sweep closes it; a key that the journal holds
// for a later claim is left to it.
func TestRequestJournalLostInACrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir)
	ended := audit.RequestKey{Caller: "user:alice", ID: "ended"}
	openKey := audit.RequestKey{Caller: "cert:spiffe://example.org/app", ID: "open"}
	for key, exec := range map[audit.RequestKey]string{ended: "e-ended", openKey: "e-open"} {
		_, claimed := claimKey(t, s, key, exec)
		require.True(t, claimed)
		appendEvent(t, s, false, keyedReceived(exec, key))
		appendEvent(t, s, true, audit.Event{Type: started, ExecutionID: exec})
	}
	appendEvent(t, s, true, audit.Event{Type: completed, ExecutionID: "e-ended", Request: &audit.RequestOutcome{Answer: []byte("lost")}})
	require.NoError(t, s.Close())
	// The crash: every journal entry lost.
	for _, f := range journals(t, dir) {
		require.NoError(t, os.Remove(f))
	}

	s = open(t, dir)
	held, claimed := claimKey(t, s, ended, "retry")
	require.False(t, claimed, "a key whose execution ran is never free")
	require.Equal(t, audit.RequestUnknown, held.State)
	require.Equal(t, "e-ended", held.ExecutionID)
	held, claimed = claimKey(t, s, openKey, "retry")
	require.False(t, claimed)
	require.Equal(t, audit.RequestRunning, held.State)
	require.Equal(t, "e-open", held.ExecutionID)
	got, err := s.Interrupted(context.Background())
	require.NoError(t, err)
	require.Len(t, got, 1)
	// The sweep closes it, and its key is settled.
	appendEvent(t, s, true, audit.Event{Type: audit.ExecutionFailed, ExecutionID: "e-open", Request: &audit.RequestOutcome{}})
	held, _ = claimKey(t, s, openKey, "retry")
	require.Equal(t, audit.RequestUnknown, held.State)

	// A key released and claimed again by an execution that has no record
	// yet: the journal, which holds the later claim, wins over the record.
	again := audit.RequestKey{Caller: "user:alice", ID: "again"}
	_, claimed = claimKey(t, s, again, "e-first")
	require.True(t, claimed)
	appendEvent(t, s, true, keyedReceived("e-first", again))
	require.NoError(t, s.ReleaseRequest(context.Background(), again, "e-first"))
	appendEvent(t, s, true, audit.Event{Type: audit.ExecutionFailed, ExecutionID: "e-first"})
	_, claimed = claimKey(t, s, again, "e-second")
	require.True(t, claimed)
	appendEvent(t, s, true, keyedReceived("e-second", again))
	require.NoError(t, s.Close())
	s = open(t, dir)
	held, claimed = claimKey(t, s, again, "retry")
	require.False(t, claimed)
	require.Equal(t, "e-second", held.ExecutionID)
}
