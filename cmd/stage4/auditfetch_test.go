package main

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/stage3client/testpki"
)

// TestAuditCheckpointFetchesAndKeeps runs serve with mTLS, a signing key
// and one audit reader, and fetches its checkpoint with audit checkpoint:
// the reader's certificate gets a checkpoint that verifies, stored under
// a new name and read back by audit verify; every failure (no reader
// certificate, the wrong verifier key, nobody listening) exits 1 and
// leaves the directory as it was.
func TestAuditCheckpointFetchesAndKeeps(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "signing.key")
	code, vkey, stderr := runStage4(t, nil, "audit", "keygen", "stage4.test/audit", "--out", keyFile)
	require.Equal(t, 0, code, stderr)
	vkey = strings.TrimSpace(vkey)
	_, otherKey, _ := runStage4(t, nil, "audit", "keygen", "stage4.test/audit", "--out", filepath.Join(dir, "other.key"))

	ca := testpki.NewCA(t, "stage4 test CA")
	serverCert, serverKey := ca.Issue(t, "server", x509.ExtKeyUsageServerAuth, "127.0.0.1")
	readerCert, readerKey := ca.Issue(t, "auditor", x509.ExtKeyUsageClientAuth, "auditor.stage4.test")
	otherCert, otherKeyFile := ca.Issue(t, "someone", x509.ExtKeyUsageClientAuth, "someone.stage4.test")
	auditLog := filepath.Join(dir, "audit")
	s4 := start(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
		"--stage3-addr", "127.0.0.1:1", "--stage3-insecure", // no plans here
		"--audit-log", auditLog, "--audit-segment-bytes", "1048576", "--audit-signing-key", keyFile,
		"--tls-cert-file", serverCert, "--tls-key-file", serverKey, "--tls-client-ca-file", ca.File,
		"--audit-readers", "auditor.stage4.test")
	addr, _ := s4.servingAddr(t)

	kept := filepath.Join(dir, "checkpoints")
	tls := []string{"--addr", addr, "--ca-file", ca.File, "--out", kept}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{name: "not a reader", args: append([]string{"--verifier-key", vkey, "--cert-file", otherCert, "--key-file", otherKeyFile}, tls...),
			wantCode: 1, wantStderr: "PermissionDenied"},
		{name: "no client certificate", args: append([]string{"--verifier-key", vkey}, tls...), wantCode: 1, wantStderr: "GetCheckpoint from"},
		{name: "the wrong verifier key", args: append([]string{"--verifier-key", strings.TrimSpace(otherKey), "--cert-file", readerCert, "--key-file", readerKey}, tls...),
			wantCode: 1, wantStderr: "does not verify with the key stage4.test/audit"},
		{name: "nobody there", args: []string{"--addr", "127.0.0.1:1", "--plaintext", "--verifier-key", vkey, "--out", kept, "--timeout", "5s"},
			wantCode: 1, wantStderr: "Unavailable"},
		{name: "no --out", args: []string{"--addr", addr, "--verifier-key", vkey}, wantCode: 2, wantStderr: "are required"},
		{name: "plaintext and TLS", args: append([]string{"--plaintext", "--verifier-key", vkey}, tls...), wantCode: 2, wantStderr: "exclude each other"},
		{name: "a verifier key that is none", args: append([]string{"--verifier-key", "nonsense"}, tls...), wantCode: 2, wantStderr: "--verifier-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runStage4(t, nil, append([]string{"audit", "checkpoint"}, tt.args...)...)
			require.Equal(t, tt.wantCode, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Contains(t, stderr, tt.wantStderr)
			require.Empty(t, stdout)
			entries, _ := os.ReadDir(kept)
			require.Empty(t, entries, "nothing written")
		})
	}

	code, stdout, stderr := runStage4(t, nil, append([]string{"audit", "checkpoint", "--verifier-key", vkey,
		"--cert-file", readerCert, "--key-file", readerKey}, tls...)...)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	entries, err := os.ReadDir(kept)
	require.NoError(t, err)
	require.Len(t, entries, 1, "one checkpoint, no temporary file left")
	path := filepath.Join(kept, entries[0].Name())
	require.Regexp(t, `^\d{8}T\d{6}Z\.txt$`, entries[0].Name())
	require.True(t, strings.HasPrefix(stdout, path+"\n"), stdout)
	require.Contains(t, stdout, "stage4.test/audit, tree size 0")
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), info.Mode().Perm())
	msg, err := os.ReadFile(path)
	require.NoError(t, err)
	v, err := loadVerifier(vkey)
	require.NoError(t, err)
	_, err = audit.OpenCheckpoint(msg, v)
	require.NoError(t, err, "the file is the signed note as served")

	code, stdout, stderr = runStage4(t, nil, "audit", "verify", "--checkpoint", path, "--verifier-key", vkey, auditLog)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
}

// TestStoreNewNeverReplaces: a name already taken is an error, and the
// file under it is left as it was.
func TestStoreNewNeverReplaces(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := storeNew(dir, "a.txt", []byte("first\n"))
	require.NoError(t, err)
	_, err = storeNew(dir, "a.txt", []byte("second\n"))
	require.ErrorContains(t, err, "exists already")
	data, err := os.ReadFile(filepath.Join(dir, "a.txt"))
	require.NoError(t, err)
	require.Equal(t, "first\n", string(data))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1)
}
