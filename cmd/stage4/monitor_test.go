package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// An auditor's cron job must tell a failed fetch from tampering: audit
// monitor and audit verify exit 0 consistent, 1 inconsistent (evidence
// kept), 2 usage, 3 no answer.

// copyTree copies the directory src to dst (a backup of a stopped log).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, info.Mode().Perm())
	}))
}

// TestAuditMonitor runs audit monitor against serve on a log directory:
// it keeps the first checkpoint, accepts a later one with a checked
// consistency proof, answers 3 when it cannot fetch or verify, 2 for a bad
// command line, and 1, with both checkpoints kept as evidence, once the
// operator restored an older copy of the log and serve signed another
// history on it.
func TestAuditMonitor(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	key, vkey := signingKeyFile(t, "stage4.test/audit")
	_, otherVkey := signingKeyFile(t, "stage4.test/audit")
	state := t.TempDir()
	r := startOnDir(t, dir, key)
	monitor := func(addr, vkey string, extra ...string) (int, string) {
		args := append([]string{"audit", "monitor", "--addr", addr, "--plaintext", "--verifier-key", vkey, "--state", state}, extra...)
		code, stdout, stderr := runStage4(t, nil, args...)
		return code, stdout + stderr
	}

	r.execute(t, 1)
	r.waitCheckpoint(t, vkey, 3)
	code, out := monitor(r.addr, vkey)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "OK first checkpoint kept: 3 records")
	r.execute(t, 1)
	r.waitCheckpoint(t, vkey, 6)
	code, out = monitor(r.addr, vkey)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "OK 6 records")
	require.Contains(t, out, "extends the kept checkpoint of 3 records (consistency proof checked), kept now")
	code, out = monitor(r.addr, vkey)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "OK no new records: 6 records")

	// No answer: not evidence.
	code, out = monitor(r.addr, otherVkey)
	require.Equal(t, 3, code, out)
	require.Contains(t, out, "does not verify")
	code, out = monitor("127.0.0.1:1", vkey, "--timeout", "2s")
	require.Equal(t, 3, code, out)
	code, _, _ = runStage4(t, nil, "audit", "monitor", "--addr", r.addr, "--verifier-key", vkey)
	require.Equal(t, 2, code, "--state is required")

	// A backup of the log at 6 records, then 3 more records, kept by the
	// monitor.
	require.Equal(t, 0, r.stop(t))
	backup := filepath.Join(t.TempDir(), "backup")
	copyTree(t, dir, backup)
	r = startOnDir(t, dir, key)
	r.execute(t, 1)
	r.waitCheckpoint(t, vkey, 9)
	code, out = monitor(r.addr, vkey)
	require.Equal(t, 0, code, out)
	require.Equal(t, 0, r.stop(t))

	// The operator restores the backup: serve, which keeps nothing across
	// a restart, signs another history on it.
	require.NoError(t, os.RemoveAll(dir))
	require.NoError(t, os.Rename(backup, dir))
	r = startOnDir(t, dir, key)
	r.execute(t, 2)
	r.waitCheckpoint(t, vkey, 12)
	code, out = monitor(r.addr, vkey)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "INCONSISTENT: the server's proof that its tree of 12 records extends the kept one of 9 does not check")
	forks, err := filepath.Glob(filepath.Join(state, "fork-*"))
	require.NoError(t, err)
	require.Len(t, forks, 1)
	for _, name := range []string{"kept", "served", "proof", "README"} {
		_, err := os.Stat(filepath.Join(forks[0], name))
		require.NoError(t, err, "the evidence holds %s", name)
	}
	kept, err := os.ReadFile(filepath.Join(forks[0], "kept"))
	require.NoError(t, err)
	require.Contains(t, string(kept), "stage4.test/audit\n9\n")
	served, err := os.ReadFile(filepath.Join(forks[0], "served"))
	require.NoError(t, err)
	require.Contains(t, string(served), "stage4.test/audit\n12\n")
	transcript(t, "audit monitor on a restored log: "+strings.TrimSpace(out))

	// --interval stops at the fork too.
	code, out = monitor(r.addr, vkey, "--interval", "10ms")
	require.Equal(t, 1, code, out)
}

// TestAuditVerifyTellsNoAnswerFromTampering: a checkpoint file that is
// empty (a failed fetch) or signed by another key is exit 3, not the 1 of
// a damaged log.
func TestAuditVerifyTellsNoAnswerFromTampering(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	prefillLogDir(t, dir, minAuditSegmentBytes, 4096)
	args := checkpointArgs(t, dir) // --checkpoint F --verifier-key K
	_, otherVkey := signingKeyFile(t, "stage4.test/audit")
	empty := filepath.Join(t.TempDir(), "empty.txt")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"matching", args, 0, "reproduce its root"},
		{"an empty checkpoint file", []string{"--checkpoint", empty, "--verifier-key", args[3]}, 3, "is empty"},
		{"another key", []string{"--checkpoint", args[1], "--verifier-key", otherVkey}, 3, "does not verify with stage4.test/audit+"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runStage4(t, nil, append(append([]string{"audit", "verify"}, tt.args...), dir)...)
			require.Equal(t, tt.code, code, "%s%s", stdout, stderr)
			require.Contains(t, stdout+stderr, tt.want)
			code, stdout, stderr = runStage4(t, nil, append(append([]string{"audit", "prove", "--sequence", "1"}, tt.args...), dir)...)
			require.Equal(t, tt.code, code, "audit prove: %s%s", stdout, stderr)
		})
	}
}
