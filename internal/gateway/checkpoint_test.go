package gateway_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/stage3client"
)

// writeSigningKey writes a new note signing key named name to a 0600 file
// in a temporary folder and returns the file and the verifier.
func writeSigningKey(t *testing.T, name string) (string, note.Verifier) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "signing.key")
	require.NoError(t, os.WriteFile(path, []byte(skey+"\n"), 0o600))
	v, err := note.NewVerifier(vkey)
	require.NoError(t, err)
	return path, v
}

// recordLines reads the records of the log at auditLog (a log directory
// or a database URL) as stored, behind the gateway's back.
func recordLines(t *testing.T, auditLog string) [][]byte {
	t.Helper()
	if !strings.HasPrefix(auditLog, "postgres://") {
		return testkit.LogLines(t, auditLog)
	}
	conn, err := pgx.Connect(testContext(t), auditLog)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(testContext(t), "SELECT record FROM audit_records ORDER BY sequence")
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	require.NoError(t, err)
	return lines
}

// waitCheckpoint polls GetCheckpoint until it covers at least size
// records: checkpoints are signed on the gateway's own schedule.
func waitCheckpoint(t *testing.T, c stage4v1.Stage4ServiceClient, v note.Verifier, size uint64) audit.Checkpoint {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		res, err := c.GetCheckpoint(testContext(t), &stage4v1.GetCheckpointRequest{})
		require.NoError(t, err)
		cp, err := audit.OpenCheckpoint([]byte(res.GetCheckpoint()), v)
		require.NoError(t, err)
		if cp.Size >= size {
			return cp
		}
		require.True(t, time.Now().Before(deadline), "no checkpoint of %d records in time (latest: %d)", size, cp.Size)
		time.Sleep(10 * time.Millisecond) // polling the gateway's signer, with a deadline
	}
}

// requireProofs checks, with tlog and leaf hashes computed from the
// stored records, that every record up to cp.Size is in cp's tree.
func requireProofs(t *testing.T, c stage4v1.Stage4ServiceClient, lines [][]byte, cp audit.Checkpoint) {
	t.Helper()
	for seq := uint64(1); seq <= cp.Size; seq++ {
		res, err := c.GetInclusionProof(testContext(t), &stage4v1.GetInclusionProofRequest{Sequence: seq, TreeSize: cp.Size})
		require.NoError(t, err)
		leaf := tlog.RecordHash(lines[seq-1])
		require.Equal(t, leaf[:], res.GetLeafHash())
		proof := make(tlog.RecordProof, len(res.GetHashes()))
		for i, h := range res.GetHashes() {
			proof[i] = tlog.Hash(h)
		}
		require.NoError(t, tlog.CheckRecord(proof, int64(cp.Size), cp.Root, int64(seq-1), leaf), "sequence %d", seq)
	}
}

// TestGatewaySignsCheckpointsAndServesProofs runs the gateway with a
// signing key on a log directory (with small segments, so that the tree
// runs across them) and PostgreSQL: checkpoints come while plans
// run and once more at shutdown; after a restart (the tree resumed from
// its stored hashes) the later checkpoint extends the earlier one, and
// every record is proven in both.
func TestGatewaySignsCheckpointsAndServesProofs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		auditLog func(t *testing.T) string
	}{
		{"log directory", func(t *testing.T) string { return filepath.Join(t.TempDir(), "audit") }},
		{"postgres", func(t *testing.T) string { return pgtest.NewDatabase(t) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ref := startReference(t)
			keyFile, verifier := writeSigningKey(t, "stage4.test/audit")
			cfg := gateway.Config{
				AuditLog:             tt.auditLog(t),
				Stage3:               stage3client.Config{Target: ref.Addr, Insecure: true},
				AuditSigningKeyFiles: []string{keyFile},
				CheckpointInterval:   10 * time.Millisecond,
				// Three executions fill a page: the log seals segments.
				AuditStore: audit.OpenConfig{SegmentBytes: segstore.MinSegmentBytes},
			}
			execute := func(c stage4v1.Stage4ServiceClient, n int) {
				for range n {
					_, err := c.ExecutePlan(testContext(t), &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
					require.NoError(t, err)
				}
			}

			gw := startGateway(t, cfg)
			c := stage4v1.NewStage4ServiceClient(dialGateway(t, gw))
			execute(c, 3) // three events each
			first := waitCheckpoint(t, c, verifier, 9)
			require.Equal(t, uint64(9), first.Size)
			requireProofs(t, c, recordLines(t, cfg.AuditLog), first)
			execute(c, 1)
			require.NoError(t, gw.stop())

			// The shutdown checkpoint covers the last execution; a restart
			// resumes the tree and checks it against that checkpoint.
			gw = startGateway(t, cfg)
			c = stage4v1.NewStage4ServiceClient(dialGateway(t, gw))
			second := waitCheckpoint(t, c, verifier, 12)
			require.Equal(t, uint64(12), second.Size)
			lines := recordLines(t, cfg.AuditLog)
			requireProofs(t, c, lines, second)
			res, err := c.GetConsistencyProof(testContext(t), &stage4v1.GetConsistencyProofRequest{FirstSize: first.Size, SecondSize: second.Size})
			require.NoError(t, err)
			proof := make(tlog.TreeProof, len(res.GetHashes()))
			for i, h := range res.GetHashes() {
				proof[i] = tlog.Hash(h)
			}
			require.NoError(t, tlog.CheckTree(proof, int64(second.Size), second.Root, int64(first.Size), first.Root))
			if segstore.IsDir(cfg.AuditLog) {
				seals, _, err := segstore.ReadSeals(filepath.Join(cfg.AuditLog, segstore.SealsFile))
				require.NoError(t, err)
				require.NotEmpty(t, seals, "the proofs crossed a sealed segment")
			}
		})
	}
}

func TestLoadSigningKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	skey, vkey, err := note.GenerateKey(rand.Reader, "stage4.test/audit")
	require.NoError(t, err)
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), mode))
		require.NoError(t, os.Chmod(p, mode))
		ownFile(t, p, false)
		return p
	}
	// A Secret mounted under fsGroup: root's, readable by the group.
	secret := filepath.Join(dir, "secret.key")
	require.NoError(t, os.WriteFile(secret, []byte(skey), 0o440))
	require.NoError(t, os.Chmod(secret, 0o440))
	tests := []struct {
		name      string
		path      string
		rootOwned bool
		wantErr   string
	}{
		{name: "none", path: ""},
		{name: "a key with a newline", path: write("good.key", skey+"\n", 0o600)},
		{name: "read-only", path: write("ro.key", skey, 0o400)},
		{name: "missing", path: filepath.Join(dir, "nope"), wantErr: "no such file"},
		{name: "readable by others", path: write("open.key", skey, 0o644), wantErr: "mode 0644"},
		{name: "readable by group, not root's", path: write("group.key", skey, 0o640), wantErr: "mode 0640"},
		{name: "root's, readable by group", path: secret, rootOwned: true},
		{name: "the verifier key", path: write("vkey", vkey, 0o600), wantErr: "does not hold a note signing key"},
		{name: "garbage", path: write("garbage", "PRIVATE+KEY+x", 0o600), wantErr: "does not hold a note signing key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.rootOwned {
				ownFile(t, tt.path, true)
			}
			signer, err := gateway.LoadSigningKey(tt.path)
			if tt.wantErr != "" {
				require.ErrorIs(t, err, gateway.ErrConfig)
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			if tt.path == "" {
				require.Nil(t, signer)
				return
			}
			require.Equal(t, "stage4.test/audit", signer.Name())
		})
	}
}

// TestGatewayRefusesALogThatDoesNotExtendItsCheckpoint: a log replaced by
// another (with its head and tree files, so that nothing else notices) is
// refused at start: signing on would sign a fork of what auditors hold.
// The checkpoint of one log directory is moved into another's.
func TestGatewayRefusesALogThatDoesNotExtendItsCheckpoint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		auditLog func(t *testing.T) string
		// replace puts other's log in place of auditLog's, keeping
		// auditLog's checkpoint, and returns the path to start on.
		replace func(t *testing.T, auditLog, other string) string
	}{
		{
			name:     "log directory",
			auditLog: func(t *testing.T) string { return filepath.Join(t.TempDir(), "audit") },
			replace: func(t *testing.T, auditLog, other string) string {
				cp := segstore.CheckpointFile
				require.NoError(t, os.Rename(filepath.Join(auditLog, cp), filepath.Join(other, cp)))
				return other
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ref := startReference(t)
			keyFile, _ := writeSigningKey(t, "stage4.test/audit")
			run := func(auditLog string) gateway.Config {
				cfg := gateway.Config{
					AuditLog:             auditLog,
					Stage3:               stage3client.Config{Target: ref.Addr, Insecure: true},
					AuditSigningKeyFiles: []string{keyFile},
				}
				gw := startGateway(t, cfg)
				_, err := stage4v1.NewStage4ServiceClient(dialGateway(t, gw)).ExecutePlan(testContext(t), &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
				require.NoError(t, err)
				require.NoError(t, gw.stop())
				return cfg
			}
			cfg := run(tt.auditLog(t))
			other := run(tt.auditLog(t)).AuditLog
			cfg.AuditLog = tt.replace(t, cfg.AuditLog, other)
			cfg.Listen, cfg.MaxMessageBytes = "127.0.0.1:0", stage3client.DefaultMaxMessageBytes
			err := gateway.Run(testContext(t), cfg, slog.New(slog.DiscardHandler), nil)
			require.ErrorIs(t, err, audit.ErrCheckpointMismatch)
		})
	}
}
