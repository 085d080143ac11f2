package main

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/witness"
	"github.com/stage4/stage4/internal/witness/witnesstest"
)

// Witness cosigning through the real binary and a real litewitness
// (filippo.io/torchwood v0.6.1, the module's Go tool): what a replica
// cannot see, a whole database rolled back to a backup, a witness does.

// witnessPolicy writes the policy of the witnesses ws, all of them needed,
// and returns its file and the parsed policy.
func witnessPolicy(t *testing.T, ws ...*witnesstest.Litewitness) (string, *witness.Policy) {
	t.Helper()
	var lines []string
	var names []string
	for _, w := range ws {
		lines = append(lines, w.PolicyLine())
		names = append(names, w.Name)
	}
	lines = append(lines, "group all-of-them all "+strings.Join(names, " "), "quorum all-of-them")
	path := filepath.Join(t.TempDir(), "witnesses.policy")
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	p, err := witness.ReadPolicyFile(path)
	require.NoError(t, err)
	return path, p
}

// waitCosigned polls r's checkpoint until one of at least size records
// comes, and checks its cosignatures against the policy with torchwood's
// verifier (witness.VerifyCheckpoint).
func (r *replica) waitCosigned(t *testing.T, vkey string, p *witness.Policy, size uint64) (*witness.Verified, []byte) {
	t.Helper()
	v, err := note.NewVerifier(vkey)
	require.NoError(t, err)
	deadline := time.Now().Add(waitTimeout)
	for {
		res, err := r.client.GetCheckpoint(testContext(t), &stage4v1.GetCheckpointRequest{})
		if err == nil {
			msg := []byte(res.GetCheckpoint())
			verified, err := witness.VerifyCheckpoint(msg, v, p)
			require.NoError(t, err, "GetCheckpoint serves cosigned checkpoints only:\n%s", msg)
			if verified.Checkpoint.Size >= size {
				return verified, msg
			}
		}
		require.True(t, time.Now().Before(deadline), "no cosigned checkpoint of %d records in time: %v", size, err)
		time.Sleep(20 * time.Millisecond) // polling serve's signer and the witness, with a deadline
	}
}

// metric returns the value of the Prometheus sample whose line starts
// with prefix (name and labels) on the /metrics page at addr, 0 if none.
func metric(t *testing.T, addr, prefix string) float64 {
	t.Helper()
	for line := range strings.SplitSeq(scrape(t, addr), "\n") {
		if strings.HasPrefix(line, prefix+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, prefix)), 64)
			require.NoError(t, err)
			return v
		}
	}
	return 0
}

// TestServeWithWitnesses: with --witness-policy, GetCheckpoint serves
// checkpoints cosigned by the policy's quorum (checked with torchwood's
// cosignature verifier), and the witness holds their tree. A witness that
// goes down stops no execution: it shows in the metrics and a WARN line,
// and the last cosigned checkpoint stays served. audit monitor checks the
// cosignatures too.
func TestServeWithWitnesses(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	key, vkey := signingKeyFile(t, "stage4.test/audit")
	w1 := witnesstest.Start(t, "witness.test/w1", vkey)
	w2 := witnesstest.Start(t, "witness.test/w2", vkey)
	policyFile, policy := witnessPolicy(t, w1, w2)
	r := startOnDir(t, dir, key, "--witness-policy", policyFile)
	r.proc.stderr.waitForLog(t, "signing audit checkpoints", map[string]any{"witnessed": true})

	r.execute(t, 2)
	cosigned, msg := r.waitCosigned(t, vkey, policy, 6)
	require.Equal(t, []string{"witness.test/w1", "witness.test/w2"}, cosigned.Cosigners())
	for _, w := range []*witnesstest.Litewitness{w1, w2} {
		size, ok := w.LogSize(t, "stage4.test/audit")
		require.True(t, ok)
		require.GreaterOrEqual(t, size, cosigned.Checkpoint.Size, "%s holds the tree it cosigned", w.Name)
	}
	require.Equal(t, 3, strings.Count(string(msg), "\n\u2014 "), "the log's signature and two cosignatures:\n%s", msg)
	require.Positive(t, metric(t, r.metricsAddr, `stage4_witness_requests_total{status="cosigned",witness="witness.test/w1"}`))

	state := t.TempDir()
	code, stdout, stderr := runStage4(t, nil, "audit", "monitor", "--addr", r.addr, "--plaintext", "--verifier-key", vkey,
		"--witness-policy", policyFile, "--state", state)
	require.Equal(t, 0, code, "%s%s", stdout, stderr)
	require.Contains(t, stdout, "cosigned by witness.test/w1")

	// w2 goes down: plans still run; the cosigned checkpoint stays.
	w2.Stop(t)
	r.execute(t, 2)
	warn := r.proc.stderr.waitForLog(t, "a witness did not cosign the audit checkpoint; asking again at the next signing",
		map[string]any{"witness": "witness.test/w2", "status": "down"})
	require.Equal(t, "WARN", warn["level"])
	res, err := r.client.GetCheckpoint(testContext(t), &stage4v1.GetCheckpointRequest{})
	require.NoError(t, err)
	v, err := note.NewVerifier(vkey)
	require.NoError(t, err)
	still, err := witness.VerifyCheckpoint([]byte(res.GetCheckpoint()), v, policy)
	require.NoError(t, err, "below the quorum, the last cosigned checkpoint is served")
	require.Equal(t, cosigned.Checkpoint, still.Checkpoint)
	require.Positive(t, metric(t, r.metricsAddr, `stage4_witness_requests_total{status="down",witness="witness.test/w2"}`))
	require.Positive(t, metric(t, r.metricsAddr, `stage4_witness_quorum_not_met_total`))
	w := r.watchHealth(t)
	waitHealthWithin(t, w, healthpb.HealthCheckResponse_SERVING, haltBound)
}

// copyDatabase makes a copy of the database at src (a backup) and returns
// its URL; it is dropped when the test ends. Nothing may be connected to
// src meanwhile (PostgreSQL copies a database as a template).
func copyDatabase(t *testing.T, src string) string {
	t.Helper()
	u, err := url.Parse(src)
	require.NoError(t, err)
	name := strings.TrimPrefix(u.Path, "/")
	require.Regexp(t, regexp.MustCompile(`^stage4_test_[0-9a-f]+$`), name)
	backup := name + "_backup"
	admin, err := pgx.Connect(testContext(t), pgtest.ServerURL())
	require.NoError(t, err)
	defer admin.Close(context.Background())
	deadline := time.Now().Add(waitTimeout)
	for {
		// The names are the test's own: a prefix and hex digits.
		_, err = admin.Exec(testContext(t), "CREATE DATABASE "+backup+" TEMPLATE "+name)
		if err == nil || !strings.Contains(err.Error(), "is being accessed by other users") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // the last sessions of a stopped replica are still ending
	}
	require.NoError(t, err)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), pgtest.ServerURL())
		if err != nil {
			t.Errorf("drop %s: %v", backup, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+backup+" WITH (FORCE)"); err != nil {
			t.Errorf("drop %s: %v", backup, err)
		}
	})
	u.Path = "/" + backup
	return u.String()
}

// TestWitnessCatchesARolledBackDatabase: the whole database is restored
// from an older backup and its replica restarted. A replica keeps nothing
// across a restart, and the restored log is consistent in itself, checkpoint
// included: only the witness, which cosigned a larger tree meanwhile, can
// tell. It does at the next signing: the replica halts (NOT_SERVING, one
// ERROR line), and GetCheckpoint never serves a checkpoint of the
// rolled-back tree.
func TestWitnessCatchesARolledBackDatabase(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	key, vkey := signingKeyFile(t, "stage4.test/audit")
	lw := witnesstest.Start(t, "witness.test/w1", vkey)
	policyFile, policy := witnessPolicy(t, lw)
	serve := func(url string) *replica {
		return startReplica(t, s3Addr, url, "r1", "--audit-signing-key", key, "--witness-policy", policyFile)
	}

	r := serve(db)
	r.execute(t, 2)
	r.waitCosigned(t, vkey, policy, 6)
	require.Equal(t, 0, r.stop(t))
	waitNoSessions(t, db)
	backup := copyDatabase(t, db) // 6 records, cosigned

	r = serve(db)
	r.execute(t, 2)
	r.waitCosigned(t, vkey, policy, 12)
	require.Equal(t, 0, r.stop(t))
	size, _ := lw.LogSize(t, "stage4.test/audit")
	require.EqualValues(t, 12, size)

	// The restore: the replica comes back on the backup.
	r = serve(backup)
	w := r.watchHealth(t)
	waitHealthWithin(t, w, healthpb.HealthCheckResponse_SERVING, haltBound)
	before, _ := r.waitCosigned(t, vkey, policy, 6)
	require.EqualValues(t, 6, before.Checkpoint.Size)
	r.execute(t, 1) // records 7 to 9 of another history
	waitHealthWithin(t, w, healthpb.HealthCheckResponse_NOT_SERVING, haltBound)
	line := r.haltLine(t)
	// The signing round may come in the middle of the execution (50 ms
	// apart), after its EXECUTION_STARTED made 7 and 8 durable.
	require.Regexp(t, `witness witness.test/w1 cosigned a tree of 12 records, and this log's durable tree holds [789]: the log was rolled back`, line)
	requireRefused(t, r)
	after, _ := r.waitCosigned(t, vkey, policy, 6)
	require.Equal(t, before.Checkpoint, after.Checkpoint, "no checkpoint of the rolled-back tree is served")
	size, _ = lw.LogSize(t, "stage4.test/audit")
	require.EqualValues(t, 12, size, "the witness still holds the tree it cosigned")

	// Through the restored database alone, a replica's own checks pass.
	code, stdout, _ := runStage4(t, nil, "audit", "verify", backup)
	require.Equal(t, 0, code, stdout)
	transcript(t, "rolled-back database caught by the witness:",
		"replica ERROR: "+line,
		"witness holds: "+strconv.FormatUint(size, 10)+" records; the restored database, on its own: "+strings.TrimSpace(stdout))
}

// TestWitnessPolicyNeedsASigningKey: a policy without a key to sign is a
// usage error.
func TestWitnessPolicyNeedsASigningKey(t *testing.T) {
	t.Parallel()
	policy := filepath.Join(t.TempDir(), "p")
	require.NoError(t, os.WriteFile(policy, []byte("witness w "+strings.Repeat("ab", 32)+" http://127.0.0.1:1\nquorum w\n"), 0o600))
	code, _, stderr := runStage4(t, nil, "serve", "--stage3-addr", "127.0.0.1:1", "--stage3-insecure", "--metrics-listen", "",
		"--audit-log", filepath.Join(t.TempDir(), "audit"), "--witness-policy", policy)
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--witness-policy needs --audit-signing-key")
}
