package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// The log-directory cases, on the real binary: files of a log
// directory changed while serve runs, a flipped tree hash, a forged seal,
// and deleted key, head and checkpoint files. Each went unnoticed before
// (or was noticed only at the next start, or blamed on the records).

// startOnDir starts serve on the log directory dir (with a reference
// Stage-3), signing checkpoints with key.
func startOnDir(t *testing.T, dir, key string, args ...string) *replica {
	t.Helper()
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	return startReplica(t, s3Addr, dir, "local", append([]string{"--audit-signing-key", key}, args...)...)
}

// TestServeFailsClosedWhenItsFilesChange: the seal file cut by its last
// line or grown by half a line, the head file replaced, the key or the
// checkpoint file removed, while serve runs: within a health check it
// turns NOT_SERVING with one ERROR line naming the file, refuses plans,
// and stays so.
func TestServeFailsClosedWhenItsFilesChange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(t *testing.T, dir string)
		want   string
	}{
		{"the last line of the seal file removed", func(t *testing.T, dir string) {
			p := filepath.Join(dir, segstore.SealsFile)
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			lines := strings.SplitAfter(string(data), "\n")
			require.NoError(t, os.WriteFile(p, []byte(strings.Join(lines[:len(lines)-2], "")), 0o600))
		}, segstore.SealsFile + " is"},
		{"half a line appended to the seal file", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, segstore.SealsFile), os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = f.WriteString(`{"first":`)
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}, segstore.SealsFile + " is"},
		{"the head file replaced", func(t *testing.T, dir string) {
			p := filepath.Join(dir, segstore.HeadFile)
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(p+".edit", data, 0o600))
			require.NoError(t, os.Rename(p+".edit", p))
		}, "head was replaced by another file"},
		{"the key file removed", func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, segstore.KeyFile)))
		}, "key was removed"},
		{"the checkpoint file removed", func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, segstore.CheckpointFile)))
		}, "checkpoint was removed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "audit")
			prefillLogDir(t, dir, minAuditSegmentBytes, 4096) // two sealed segments
			key, vkey := signingKeyFile(t, "stage4.test/audit")
			r := startOnDir(t, dir, key)
			r.execute(t, 1)
			r.waitCheckpoint(t, vkey, 14)
			w := r.watchHealth(t)
			waitHealthWithin(t, w, healthpb.HealthCheckResponse_SERVING, haltBound)

			tt.change(t, dir)
			waitHealthWithin(t, w, healthpb.HealthCheckResponse_NOT_SERVING, haltBound)
			require.Contains(t, r.haltLine(t), tt.want)
			requireRefused(t, r)
		})
	}
}

// TestServeNeverServesAProofFromADamagedTree: one hash flipped in the
// tree file, in place. The proof that would cross it is refused with
// DATA_LOSS and serve turns NOT_SERVING, instead of handing the auditor a
// proof that fails at their end; and audit prove, offline, says that the
// tree is damaged rather than blaming the record.
func TestServeNeverServesAProofFromADamagedTree(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	key, vkey := signingKeyFile(t, "stage4.test/audit")
	r := startOnDir(t, dir, key)
	r.execute(t, 4)
	_, cpMsg := r.waitCheckpoint(t, vkey, 12)
	cpFile := filepath.Join(t.TempDir(), "checkpoint.txt")
	require.NoError(t, os.WriteFile(cpFile, cpMsg, 0o600))
	w := r.watchHealth(t)
	waitHealthWithin(t, w, healthpb.HealthCheckResponse_SERVING, haltBound)

	// Record 1's leaf hash: on the path of record 2's proof.
	f, err := os.OpenFile(filepath.Join(dir, segstore.TreeFile), os.O_RDWR, 0)
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, tlog.StoredHashIndex(0, 0)*tlog.HashSize)
	require.NoError(t, err)
	b[0] ^= 1
	_, err = f.WriteAt(b, tlog.StoredHashIndex(0, 0)*tlog.HashSize)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	_, err = r.client.GetInclusionProof(testContext(t), &stage4v1.GetInclusionProofRequest{Sequence: 2, TreeSize: 12})
	require.Equal(t, codes.DataLoss, status.Code(err), "%v", err)
	waitHealthWithin(t, w, healthpb.HealthCheckResponse_NOT_SERVING, haltBound)
	require.Contains(t, r.haltLine(t), "stored tree hashes were changed")
	require.Equal(t, 0, r.stop(t))

	code, stdout, _ := runStage4(t, nil, "audit", "prove", "--checkpoint", cpFile, "--verifier-key", vkey, "--sequence", "2", dir)
	require.Equal(t, 1, code)
	require.Contains(t, stdout, "NOT PROVEN: the stored tree hashes reproduce the checkpoint's root, but those on record 2's path do not lead to it: the tree file")
	code, stdout, _ = runStage4(t, nil, "audit", "verify", "--checkpoint", cpFile, "--verifier-key", vkey, dir)
	require.Equal(t, 0, code, "the records are intact: %s", stdout)
}

// TestAuditVerifyFindsAForgedSeal: a made-up execution added to a seal's
// open list, which the next start would close with a signed
// EXECUTION_FAILED, makes audit verify (and its --checkpoint check) fail.
func TestAuditVerifyFindsAForgedSeal(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	prefillLogDir(t, dir, minAuditSegmentBytes, 4096)
	cp := checkpointArgs(t, dir)
	code, stdout, stderr := runStage4(t, nil, append(append([]string{"audit", "verify"}, cp...), dir)...)
	require.Equal(t, 0, code, "%s%s", stdout, stderr)

	p := filepath.Join(dir, segstore.SealsFile)
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	first, rest, _ := strings.Cut(string(data), "\n")
	forged := strings.Replace(first, `"tree":`, `"open":[{"execution_id":"0123456789abcdef0123456789abcdef","last_type":"AUDIT_EVENT_TYPE_EXECUTION_STARTED","sequence":2}],"tree":`, 1)
	require.NotEqual(t, first, forged)
	require.NoError(t, os.WriteFile(p, []byte(forged+"\n"+rest), 0o600))

	code, stdout, _ = runStage4(t, nil, append(append([]string{"audit", "verify"}, cp...), dir)...)
	require.Equal(t, 1, code, stdout)
	require.Contains(t, stdout, "DAMAGED at sequence 4")
	require.Contains(t, stdout, "lists the executions open after record 4 as 0123456789abcdef0123456789abcdef (record 2, AUDIT_EVENT_TYPE_EXECUTION_STARTED); its records leave none open")
}

// TestServeRefusesALogWithoutItsFiles: the key, head or checkpoint file of
// a log directory with records deleted while serve was stopped: serve
// refuses to start, naming the file, unless --audit-new-log says to go on,
// which it then logs.
func TestServeRefusesALogWithoutItsFiles(t *testing.T) {
	t.Parallel()
	for _, name := range []string{segstore.KeyFile, segstore.HeadFile, segstore.CheckpointFile} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "audit")
			key, vkey := signingKeyFile(t, "stage4.test/audit")
			r := startOnDir(t, dir, key)
			r.execute(t, 1)
			r.waitCheckpoint(t, vkey, 3)
			require.Equal(t, 0, r.stop(t))
			require.NoError(t, os.Remove(filepath.Join(dir, name)))

			s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
			s3Addr, _ := s3.servingAddr(t)
			refused := start(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--stage3-addr", s3Addr, "--stage3-insecure",
				"--audit-log", dir, "--audit-signing-key", key)
			require.Equal(t, 1, refused.exitCode(t))
			require.Contains(t, refused.stderr.String(), "holds 3 records, but not "+name+" (")
			require.Contains(t, refused.stderr.String(), "--audit-new-log")

			again := startReplica(t, s3Addr, dir, "local", "--audit-signing-key", key, "--audit-new-log")
			warn := again.proc.stderr.waitForLog(t, "started the audit log (--audit-new-log) although files were missing", nil)
			require.Contains(t, warn["missing"], name+" (")
			again.execute(t, 1)
		})
	}
}
