package segstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
)

// The log directory's integrity while the store runs and at its start:
// the local-directory cases, each of which went unnoticed before.

// TestFilesChangedWhileRunningFailTheStore: the seal, head, key, tree and
// checkpoint files changed by anything but the store fail it at the next
// ping (or sooner, at their next use), for good, as an integrity failure.
func TestFilesChangedWhileRunningFailTheStore(t *testing.T) {
	t.Parallel()
	appendTo := func(name, text string) func(dir string) error {
		return func(dir string) error {
			f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteString(text)
			return err
		}
	}
	tests := []struct {
		name   string
		change func(dir string) error
		want   string
	}{
		{"the last line of the seal file removed", func(dir string) error {
			p := filepath.Join(dir, segstore.SealsFile)
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			lines := strings.SplitAfter(strings.TrimSuffix(string(data), "\n"), "\n")
			return os.WriteFile(p, []byte(strings.Join(lines[:len(lines)-1], "")), 0o600)
		}, "seals.jsonl"},
		{"half a line appended to the seal file", appendTo(segstore.SealsFile, `{"first":`), "seals.jsonl is"},
		{"the head file removed", func(dir string) error { return os.Remove(filepath.Join(dir, segstore.HeadFile)) }, "head was removed"},
		{"the head file replaced", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, segstore.HeadFile)+".new", []byte(`{"sequence":1,"hash":"sha256:00"}`), 0o600)
		}, ""},
		{"the key file removed", func(dir string) error { return os.Remove(filepath.Join(dir, segstore.KeyFile)) }, "key was removed"},
		{"the tree file cut", func(dir string) error { return os.Truncate(filepath.Join(dir, segstore.TreeFile), 64) }, "tree is 64 bytes long"},
		{"the checkpoint file removed", func(dir string) error { return os.Remove(filepath.Join(dir, segstore.CheckpointFile)) }, "checkpoint was removed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := open(t, dir, small...)
			for i := range 40 { // several seals
				execute(t, s, i)
			}
			require.NoError(t, s.SaveCheckpoint(t.Context(), 3, checkpointNote(3)))
			require.NoError(t, s.Ping(t.Context())) // writes the head file
			if tt.want == "" {
				// Replaced by a rename, as an editor saves a file.
				p := filepath.Join(dir, segstore.HeadFile)
				require.NoError(t, tt.change(dir))
				require.NoError(t, os.Rename(p+".new", p))
				tt.want = "head was replaced by another file"
			} else {
				require.NoError(t, tt.change(dir))
			}
			err := s.Ping(t.Context())
			require.ErrorIs(t, err, audit.ErrIntegrity)
			require.ErrorContains(t, err, tt.want)
			err = s.Append(context.Background(), true, func(h audit.Head) ([]audit.Record, error) {
				return audit.RenderRecords(h, time.Now(), []audit.Event{{Type: received, ExecutionID: "after"}})
			})
			require.ErrorIs(t, err, audit.ErrIntegrity, "the store failed for good")
		})
	}
}

// checkpointNote is a well-formed checkpoint whose signature the store
// does not check.
func checkpointNote(size uint64) []byte {
	return []byte(audit.FormatCheckpoint("example.com/log", audit.TreeHead{Size: size}) + "\n\u2014 example.com/log AAAAAA==\n")
}

// TestMissingFilesAreRefusedAtStart: a log with records whose key, head
// or checkpoint file is gone is refused, naming the file, unless the
// operator says to go on without it (WithNewLog), which Recovery reports.
func TestMissingFilesAreRefusedAtStart(t *testing.T) {
	t.Parallel()
	for _, name := range []string{segstore.KeyFile, segstore.HeadFile, segstore.CheckpointFile} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := open(t, dir)
			execute(t, s, 0)
			require.NoError(t, s.SaveCheckpoint(t.Context(), 3, checkpointNote(3)))
			_, err := s.PinVerifierKeys(t.Context(), nil, []string{"example.com/log+00000000+AQ"})
			require.NoError(t, err)
			require.NoError(t, s.Close())
			require.NoError(t, os.Remove(filepath.Join(dir, name)))

			_, err = segstore.Open(dir)
			require.ErrorIs(t, err, segstore.ErrMissingFile)
			require.ErrorContains(t, err, "holds 3 records, but not "+name+" (")

			s = open(t, dir, segstore.WithNewLog())
			require.Len(t, s.Recovery().MissingFiles, 1)
			require.True(t, strings.HasPrefix(s.Recovery().MissingFiles[0], name+" ("))
			execute(t, s, 1)
		})
	}
}

// TestNewLogHasAHeadFile: a log without records gets a head file at once,
// so that one whose first records were written before its first head file
// update (a crash within a second) is not taken for one whose head file
// was deleted.
func TestNewLogHasAHeadFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir)
	_, err := os.Stat(filepath.Join(dir, segstore.HeadFile))
	require.NoError(t, err)
	execute(t, s, 0)
	// A crash before any ping: the head file still names no record.
	require.NoError(t, s.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, segstore.HeadFile), []byte(`{"sequence":0,"hash":"sha256:`+strings.Repeat("0", 64)+`"}`+"\n"), 0o600))
	open(t, dir)
}

// TestVerifyRecomputesSeals: audit verify (VerifyDir) recomputes every
// seal's open executions and tree edge from the records, so that a forged
// seal, which the next start would trust, is damage.
func TestVerifyRecomputesSeals(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		forge func(sl map[string]any)
		want  string
	}{
		{"a made-up open execution", func(sl map[string]any) {
			open, _ := sl["open"].([]any)
			sl["open"] = append(open, map[string]any{"execution_id": "forged", "last_type": "AUDIT_EVENT_TYPE_EXECUTION_STARTED", "sequence": 1})
		}, "forged (record 1, AUDIT_EVENT_TYPE_EXECUTION_STARTED)"},
		{"a changed tree edge", func(sl map[string]any) {
			tree := sl["tree"].([]any)
			tree[0] = strings.Repeat("ab", 32)
		}, "tree edge after record"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := open(t, dir, small...)
			for i := range 30 {
				execute(t, s, i)
			}
			// An execution open across the seals.
			appendEvent(t, s, true, audit.Event{Type: received, ExecutionID: "running"})
			for i := range 30 {
				execute(t, s, 100+i)
			}
			require.NoError(t, s.Close())
			_, err := segstore.VerifyDir(dir, nil)
			require.NoError(t, err)

			// Forge the second seal (a line the others follow).
			p := filepath.Join(dir, segstore.SealsFile)
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			require.Greater(t, len(lines), 2)
			var sl map[string]any
			require.NoError(t, json.Unmarshal([]byte(lines[1]), &sl))
			tt.forge(sl)
			forged, err := json.Marshal(sl)
			require.NoError(t, err)
			lines[1] = string(forged)
			require.NoError(t, os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600))

			_, err = segstore.VerifyDir(dir, nil)
			var ce *audit.ChainError
			require.True(t, errors.As(err, &ce), "%v", err)
			require.Contains(t, ce.Reason, tt.want)
		})
	}
}
