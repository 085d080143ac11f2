package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/audit/segstore"
	"github.com/stage4/stage4/internal/pgtest"
)

func TestAuditKeygen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "signing.key")
	code, stdout, stderr := runStage4(t, nil, "audit", "keygen", "stage4.example/audit", "--out", out)
	require.Equal(t, 0, code, stderr)
	info, err := os.Stat(out)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "the private key is readable by its owner only")
	skey, err := os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(skey), "PRIVATE+KEY+stage4.example/audit+"))
	vkey := strings.TrimSpace(stdout)
	v, err := note.NewVerifier(vkey)
	require.NoError(t, err, "stdout is the verifier key")
	require.Equal(t, "stage4.example/audit", v.Name())
	derived, err := verifierKeyOf(string(skey))
	require.NoError(t, err)
	require.Equal(t, vkey, derived, "dev derives the same verifier key from a private key")

	tests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{name: "the file exists", args: []string{"stage4.example/audit", "--out", out}, wantStderr: "file exists"},
		{name: "no --out", args: []string{"stage4.example/audit"}, wantStderr: "Usage: stage4 audit keygen"},
		{name: "no name", args: []string{"--out", filepath.Join(dir, "k2")}, wantStderr: "Usage: stage4 audit keygen"},
		{name: "a name with a space", args: []string{"a b", "--out", filepath.Join(dir, "k3")}, wantStderr: "is not a key name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, _, stderr := runStage4(t, nil, append([]string{"audit", "keygen"}, tt.args...)...)
			require.Equal(t, 2, code, stderr)
			require.Contains(t, stderr, tt.wantStderr)
		})
	}
}

// signedLog is an audit log of seven records with a checkpoint of its
// first five, signed by its own key.
type signedLog struct {
	url        string // a file path or a database URL
	checkpoint string // the checkpoint's file
	vkey       string
}

// writeSignedLog writes a signedLog through the audit package on store.
func writeSignedLog(t *testing.T, store audit.Store, url string) signedLog {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "stage4.test/audit")
	require.NoError(t, err)
	signer, err := note.NewSigner(skey)
	require.NoError(t, err)
	lg, err := audit.New(store, audit.WithCheckpointSigner(signer))
	require.NoError(t, err)
	appendN := func(n int) {
		for i := range n {
			_, err := lg.Append(t.Context(), audit.Event{
				Type: audit.PlanReceived, ExecutionID: fmt.Sprintf("exec-%d", i), UserID: "alice",
				Details: audit.Details{"note": "original"},
			})
			require.NoError(t, err)
		}
	}
	appendN(5)
	_, _, err = lg.SignCheckpoint(t.Context())
	require.NoError(t, err)
	cp, err := lg.Checkpoint(t.Context())
	require.NoError(t, err)
	appendN(2) // the log goes on after the checkpoint
	require.NoError(t, lg.Close())
	path := filepath.Join(t.TempDir(), "checkpoint.txt")
	require.NoError(t, os.WriteFile(path, cp, 0o600))
	return signedLog{url: url, checkpoint: path, vkey: vkey}
}

// rechain changes record from (0-based) of lines and recomputes every
// hash from it on, previous_hash links included, as a forger who can
// write the log would: the hash chain is intact afterwards.
func rechain(lines [][]byte, from int) [][]byte {
	out := make([][]byte, len(lines))
	var prev string
	for i, line := range lines {
		line = bytes.Clone(line)
		if i >= from {
			if i == from {
				line = bytes.Replace(line, []byte(`"original"`), []byte(`"tampered"`), 1)
			} else {
				at := bytes.Index(line, []byte(`"previous_hash":"sha256:`)) + len(`"previous_hash":"sha256:`)
				copy(line[at:], prev)
			}
			cut := bytes.LastIndex(line, []byte(`,"hash":`))
			sum := sha256.Sum256(append(bytes.Clone(line[:cut]), '}'))
			line = append(line[:cut], `,"hash":"sha256:`+hex.EncodeToString(sum[:])+`"}`...)
		}
		at := bytes.LastIndex(line, []byte(`"hash":"sha256:`)) + len(`"hash":"sha256:`)
		prev = string(line[at : at+64])
		out[i] = line
	}
	return out
}

// forgeDir rewrites record 2 of the log directory's only segment, and the
// chain after it, in place: the records keep their lengths ("original" and
// "tampered" are both eight letters), so the preallocated zeros after them
// stay where they were.
func forgeDir(t *testing.T, dir string) {
	t.Helper()
	require.Equal(t, 0, sealedSegments(t, dir), "one segment, so that no seal needs forging too")
	path := filepath.Join(dir, segstore.SegmentName(1))
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	end := bytes.IndexByte(data, 0)
	require.Positive(t, end)
	lines := bytes.Split(bytes.TrimSuffix(data[:end], []byte("\n")), []byte("\n"))
	forged := append(bytes.Join(rechain(lines, 1), []byte("\n")), '\n')
	require.Len(t, forged, end)
	copy(data, forged)
	require.NoError(t, os.WriteFile(path, data, 0o600))
	// And the head file, which names the last record by its hash: a forger
	// who rechains the log rewrites it too.
	last := forged[bytes.LastIndex(forged[:len(forged)-1], []byte("\n"))+1:]
	at := bytes.LastIndex(last, []byte(`"hash":"`)) + len(`"hash":"`)
	head := fmt.Sprintf(`{"sequence":%d,"hash":"%s"}`+"\n", len(lines), last[at:at+len("sha256:")+64])
	require.NoError(t, os.WriteFile(filepath.Join(dir, segstore.HeadFile), []byte(head), 0o600))
}

// forgeDatabase rewrites record 2 of the log in the database and the
// chain after it, the hash columns and the head row included.
func forgeDatabase(t *testing.T, url string) {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT record FROM audit_records ORDER BY sequence")
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	require.NoError(t, err)
	forged := rechain(lines, 1)
	var last []byte
	for i := 1; i < len(forged); i++ {
		_, sum, err := audit.ParseRecord(forged[i])
		require.NoError(t, err)
		_, err = conn.Exec(ctx, "UPDATE audit_records SET record = $1, hash = $2 WHERE sequence = $3", forged[i], sum[:], i+1)
		require.NoError(t, err)
		last = sum[:]
	}
	_, err = conn.Exec(ctx, "UPDATE audit_head SET hash = $1", last)
	require.NoError(t, err)
}

// truncateFile keeps the first n records of the log file.
func truncateFile(t *testing.T, path string, n int) {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := bytes.SplitAfter(data, []byte("\n"))
	require.NoError(t, os.WriteFile(path, bytes.Join(lines[:n], nil), 0o600))
}

// TestAuditVerifyCheckpoint: a log whose record was changed and whose
// chain was recomputed passes the chain check but not the checkpoint
// signed before the change; audit prove says which record no longer
// proves. For a log directory and PostgreSQL.
func TestAuditVerifyCheckpoint(t *testing.T) {
	t.Parallel()
	stores := []struct {
		name  string
		open  func(t *testing.T) signedLog
		forge func(t *testing.T, url string)
	}{
		{
			name: "log directory",
			open: func(t *testing.T) signedLog {
				dir := filepath.Join(t.TempDir(), "audit")
				s, err := segstore.Open(dir, segstore.WithSegmentBytes(segstore.MinSegmentBytes))
				require.NoError(t, err)
				return writeSignedLog(t, s, dir)
			},
			forge: forgeDir,
		},
		{
			name: "postgres",
			open: func(t *testing.T) signedLog {
				url := pgtest.NewDatabase(t)
				s, err := pgstore.Open(t.Context(), url)
				require.NoError(t, err)
				return writeSignedLog(t, s, url)
			},
			forge: forgeDatabase,
		},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			lg := st.open(t)
			_, otherVkey, err := note.GenerateKey(rand.Reader, "stage4.test/audit")
			require.NoError(t, err)
			withCheckpoint := []string{"--checkpoint", lg.checkpoint, "--verifier-key", lg.vkey, lg.url}

			steps := []struct {
				name       string
				before     func(t *testing.T)
				args       []string
				wantCode   int
				wantStdout string
			}{
				{name: "intact, with the checkpoint", args: withCheckpoint, wantCode: 0, wantStdout: "the first 5 records reproduce its root"},
				{name: "prove a record", args: []string{"prove", "--checkpoint", lg.checkpoint, "--verifier-key", lg.vkey, "--sequence", "2", lg.url},
					wantCode: 0, wantStdout: "OK record 2 is in the tree of 5 records"},
				{name: "another key", args: []string{"--checkpoint", lg.checkpoint, "--verifier-key", otherVkey, lg.url}, wantCode: 3},
				{name: "checkpoint without its key", args: []string{"--checkpoint", lg.checkpoint, lg.url}, wantCode: 2},
				{name: "prove beyond the checkpoint", args: []string{"prove", "--checkpoint", lg.checkpoint, "--verifier-key", lg.vkey, "--sequence", "6", lg.url}, wantCode: 2},
				{
					name:   "rechained: the chain alone says OK",
					before: func(t *testing.T) { st.forge(t, lg.url) },
					args:   []string{lg.url}, wantCode: 0, wantStdout: "OK 7 records",
				},
				{name: "rechained: the checkpoint says no", args: withCheckpoint, wantCode: 1, wantStdout: "CHECKPOINT NOT MATCHED"},
				{name: "rechained: the changed record does not prove", args: []string{"prove", "--checkpoint", lg.checkpoint, "--verifier-key", lg.vkey, "--sequence", "2", lg.url},
					wantCode: 1, wantStdout: "NOT PROVEN"},
			}
			for _, s := range steps { // in order: the forgery stays for the steps after it
				if s.before != nil {
					s.before(t)
				}
				args := s.args
				if args[0] != "prove" {
					args = append([]string{"verify"}, args...)
				}
				code, stdout, stderr := runStage4(t, nil, append([]string{"audit"}, args...)...)
				require.Equal(t, s.wantCode, code, "%s\nstdout: %s\nstderr: %s", s.name, stdout, stderr)
				require.Contains(t, stdout, s.wantStdout, s.name)
			}
		})
	}
}

// TestAuditVerifyCheckpointOfACutLog: a log cut below the checkpoint's size
// fails the checkpoint, which names records it no longer holds.
func TestAuditVerifyCheckpointOfACutLog(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	st := memstore.NewStorage()
	lg := writeSignedLog(t, memstore.Open(st, ""), path)
	writeRecords(t, st, path) // a single-file log: what the checkpoint signs, and more
	truncateFile(t, path, 4)
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", "--checkpoint", lg.checkpoint, "--verifier-key", lg.vkey, path)
	require.Equal(t, 1, code, stderr)
	require.Contains(t, stdout, "the log holds 4: records were removed")
}
