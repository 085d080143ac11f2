package main

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

// Helpers of the tests that hold the operator to account (issue 19):
// fork_test.go, localintegrity_test.go, witness_test.go, monitor_test.go.

// signingKeyFile writes a new checkpoint signing key named name to a 0600
// file and returns the file and its verifier key.
func signingKeyFile(t *testing.T, name string) (path, vkey string) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	require.NoError(t, err)
	path = filepath.Join(t.TempDir(), "signing.key")
	require.NoError(t, os.WriteFile(path, []byte(skey+"\n"), 0o600))
	return path, vkey
}

// replica is a running stage4 serve with a client.
type replica struct {
	proc              *proc
	addr, metricsAddr string
	conn              *grpc.ClientConn
	client            stage4v1.Stage4ServiceClient
	health            healthpb.HealthClient
}

// startReplica starts stage4 serve on the audit log at auditLog under
// replica name, in front of the Stage-3 at stage3Addr, signing
// checkpoints every 50 ms, with args added.
func startReplica(t *testing.T, stage3Addr, auditLog, name string, args ...string) *replica {
	t.Helper()
	p := start(t, []string{"STAGE4_AUDIT_SEGMENT_BYTES=1048576"}, append([]string{
		"serve", "--audit-readers", "*", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--stage3-addr", stage3Addr, "--stage3-insecure", "--audit-log", auditLog, "--replica-name", name,
		"--checkpoint-interval", "50ms",
	}, args...)...)
	addr, metricsAddr := p.servingAddr(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return &replica{proc: p, addr: addr, metricsAddr: metricsAddr, conn: conn, client: stage4v1.NewStage4ServiceClient(conn), health: healthpb.NewHealthClient(conn)}
}

// execute runs n plans through r, which must succeed.
func (r *replica) execute(t *testing.T, n int) {
	t.Helper()
	for range n {
		_, err := r.client.ExecutePlan(testContext(t), &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.NoError(t, err)
	}
}

// stop stops r with SIGINT and returns its exit status. It closes the
// client first: a health watch still open would hold the graceful stop
// for its whole grace period.
func (r *replica) stop(t *testing.T) int {
	t.Helper()
	r.conn.Close()
	require.NoError(t, r.proc.cmd.Process.Signal(os.Interrupt))
	return r.proc.exitCode(t)
}

// checkpoint fetches r's checkpoint and opens it with vkey.
func (r *replica) checkpoint(t *testing.T, vkey string) (audit.Checkpoint, []byte) {
	t.Helper()
	res, err := r.client.GetCheckpoint(testContext(t), &stage4v1.GetCheckpointRequest{})
	require.NoError(t, err)
	v, err := note.NewVerifier(vkey)
	require.NoError(t, err)
	cp, err := audit.OpenCheckpoint([]byte(res.GetCheckpoint()), v)
	require.NoError(t, err)
	return cp, []byte(res.GetCheckpoint())
}

// waitCheckpoint polls r's checkpoint until it covers at least size
// records, and returns it: checkpoints are signed on serve's schedule.
func (r *replica) waitCheckpoint(t *testing.T, vkey string, size uint64) (audit.Checkpoint, []byte) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		res, err := r.client.GetCheckpoint(testContext(t), &stage4v1.GetCheckpointRequest{})
		if err == nil {
			v, verr := note.NewVerifier(vkey)
			require.NoError(t, verr)
			cp, err := audit.OpenCheckpoint([]byte(res.GetCheckpoint()), v)
			require.NoError(t, err)
			if cp.Size >= size {
				return cp, []byte(res.GetCheckpoint())
			}
		}
		require.True(t, time.Now().Before(deadline), "no checkpoint of %d records in time: %v", size, err)
		time.Sleep(20 * time.Millisecond) // polling serve's signer, with a deadline
	}
}

// watchHealth opens a health watch of the overall status.
func (r *replica) watchHealth(t *testing.T) healthpb.Health_WatchClient {
	t.Helper()
	w, err := r.health.Watch(testContext(t), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	return w
}

// haltLine waits for the ERROR line of a replica that halted and returns
// its error field.
func (r *replica) haltLine(t *testing.T) string {
	t.Helper()
	line := r.proc.stderr.waitForLog(t, "audit store unavailable; refusing plans", nil)
	require.Equal(t, "ERROR", line["level"])
	msg, _ := line["error"].(string)
	require.Contains(t, msg, audit.ErrIntegrity.Error(), "the line says the store was changed")
	return msg
}

// dbRecords reads the records of the log in the database at url.
func dbRecords(t *testing.T, url string) [][]byte {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(testContext(t), "SELECT record FROM audit_records ORDER BY sequence")
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	require.NoError(t, err)
	return lines
}

// rollBackDB is the operator's edit of the issue: one transaction that
// deletes the records after record to and moves audit_head back to it,
// with the hash and tree edge of that record, so that the shortened log is
// consistent in itself.
func rollBackDB(t *testing.T, url string, to uint64) {
	t.Helper()
	lines := dbRecords(t, url)
	b, err := audit.NewTreeBuilder(0, nil)
	require.NoError(t, err)
	for _, l := range lines[:to] {
		_, err := b.Add(l)
		require.NoError(t, err)
	}
	_, hash, err := audit.ParseRecord(lines[to-1])
	require.NoError(t, err)
	var edge []byte
	for _, h := range b.Edge() {
		edge = append(edge, h[:]...)
	}
	conn, err := pgx.Connect(testContext(t), url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	err = pgx.BeginFunc(testContext(t), conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(testContext(t), "DELETE FROM audit_records WHERE sequence > $1", int64(to)); err != nil {
			return err
		}
		_, err := tx.Exec(testContext(t), "UPDATE audit_head SET sequence = $1, hash = $2, tree = $3, durable_sequence = $1 WHERE id = 1",
			int64(to), hash[:], edge)
		return err
	})
	require.NoError(t, err)
}

// storedCheckpoint reads audit_checkpoint behind the replicas' back.
func storedCheckpoint(t *testing.T, url string) []byte {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var cp []byte
	require.NoError(t, conn.QueryRow(testContext(t), "SELECT checkpoint FROM audit_checkpoint WHERE id = 1").Scan(&cp))
	return cp
}

// transcript logs what a test shows, for the record (go test -v).
func transcript(t *testing.T, lines ...string) {
	t.Helper()
	t.Log("\n" + strings.Join(lines, "\n"))
}
