package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/testkit"
)

// The PostgreSQL cases, tried as a database operator would, on
// replicas of the real binary: a fork (rows deleted and the head moved
// back, then more traffic), a garbage head, a deleted row, and a replica
// with another signing key. Each went unnoticed before.

// haltBound is how long a replica may take to notice a changed database
// without traffic: its health check pings the store about once a second.
const haltBound = 10 * time.Second

// requireRefused checks that a plan is refused before Stage-3 with
// AUDIT_UNAVAILABLE.
func requireRefused(t *testing.T, r *replica) {
	t.Helper()
	_, err := r.client.ExecutePlan(testContext(t), &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.Equal(t, stage4v1.ErrorReason_AUDIT_UNAVAILABLE.String(), reasonOf(err))
}

// TestReplicasCatchAForkedDatabase: with two replicas on PostgreSQL, one
// transaction deletes the newest rows and sets audit_head back to an
// older record; more traffic follows. Both replicas refuse to build on
// the moved head (each appended past it), turn NOT_SERVING with one ERROR
// line naming what differs, and sign nothing: the stored checkpoint stays
// the one auditors hold. A replica started afterwards refuses to start,
// since the shortened log does not extend that checkpoint.
func TestReplicasCatchAForkedDatabase(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	key, vkey := signingKeyFile(t, "stage4.test/audit")
	r1 := startReplica(t, s3Addr, url, "r1", "--audit-signing-key", key)
	r2 := startReplica(t, s3Addr, url, "r2", "--audit-signing-key", key)
	r1.execute(t, 3)
	r2.execute(t, 3)
	held, heldMsg := r1.waitCheckpoint(t, vkey, 18) // an auditor keeps it
	require.EqualValues(t, 18, held.Size)
	w1, w2 := r1.watchHealth(t), r2.watchHealth(t)
	waitHealthWithin(t, w1, healthpb.HealthCheckResponse_SERVING, haltBound)
	waitHealthWithin(t, w2, healthpb.HealthCheckResponse_SERVING, haltBound)

	rollBackDB(t, url, 6) // below what each replica appended
	requireRefused(t, r1)
	requireRefused(t, r2)
	waitHealthWithin(t, w1, healthpb.HealthCheckResponse_NOT_SERVING, haltBound)
	waitHealthWithin(t, w2, healthpb.HealthCheckResponse_NOT_SERVING, haltBound)
	line1, line2 := r1.haltLine(t), r2.haltLine(t)
	for _, line := range []string{line1, line2} {
		// Whichever comes first: an append that finds the head moved
		// back, or a signing round that finds the log short of the
		// checkpoint (every 50 ms here).
		require.Regexp(t, `audit_head went back to record 6, and this replica saw record (9|18)|`+
			`the store's latest checkpoint names 18 records, the log's durable tree holds 6: records were removed`, line)
	}
	require.Len(t, dbRecords(t, url), 6, "nothing was appended to the shortened log")
	require.Equal(t, string(heldMsg), string(storedCheckpoint(t, url)), "the stored checkpoint is still the one auditors hold")

	// A replica that starts now, with nothing in memory, finds the stored
	// checkpoint that the log no longer reaches.
	r3 := start(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--stage3-addr", s3Addr, "--stage3-insecure",
		"--audit-log", url, "--replica-name", "r3", "--audit-signing-key", key)
	require.Equal(t, 1, r3.exitCode(t))
	require.Contains(t, r3.stderr.String(), "the store's latest checkpoint names 18 records, the log's durable tree holds 6: records were removed")

	// What the auditor holding the checkpoint sees.
	cpFile := filepath.Join(t.TempDir(), "checkpoint.txt")
	require.NoError(t, os.WriteFile(cpFile, heldMsg, 0o600))
	code, stdout, _ := runStage4(t, nil, "audit", "verify", "--checkpoint", cpFile, "--verifier-key", vkey, url)
	require.Equal(t, 1, code)
	require.Contains(t, stdout, "CHECKPOINT NOT MATCHED")
	transcript(t, "forked database caught by the replicas:",
		"r1 ERROR: "+line1, "r2 ERROR: "+line2,
		"r3 (started after): "+lastLine(r3.stderr.String()),
		"audit verify --checkpoint (the auditor's): "+strings.TrimSpace(stdout))
}

// lastLine is the last line of s.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// TestReplicaRefusesABrokenHead: the head row's hash set to garbage. The
// replica neither appends to the broken chain nor stays SERVING, even
// without traffic: its health check finds it.
func TestReplicaRefusesABrokenHead(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	r := startReplica(t, s3Addr, url, "r1")
	r.execute(t, 2)
	w := r.watchHealth(t)
	waitHealthWithin(t, w, healthpb.HealthCheckResponse_SERVING, haltBound)

	pgtest.Exec(t, url, "UPDATE audit_head SET hash = sha256(hash) WHERE id = 1")
	waitHealthWithin(t, w, healthpb.HealthCheckResponse_NOT_SERVING, haltBound)
	require.Contains(t, r.haltLine(t), "audit_head says record 6 has hash")
	requireRefused(t, r)
	require.Len(t, dbRecords(t, url), 6, "nothing was appended to the broken chain")
}

// TestListingNeverSkipsADeletedRow: a row deleted from the middle of the
// log fails the listings that would skip it with DATA_LOSS, filtered
// (the execution whose next record follows the gap) or not.
func TestListingNeverSkipsADeletedRow(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	r := startReplica(t, s3Addr, url, "r1")
	r.execute(t, 3)
	pgtest.Exec(t, url, "DELETE FROM audit_records WHERE sequence = 4") // the second execution's PLAN_RECEIVED
	res, err := r.client.ListAuditEvents(testContext(t), &stage4v1.ListAuditEventsRequest{})
	require.Equal(t, codes.DataLoss, status.Code(err), "unfiltered: %v, %d events", err, len(res.GetAuditEvents()))
	// The second execution's EXECUTION_STARTED (record 5) extends the
	// deleted record.
	lines := dbRecords(t, url)
	var second string
	for _, l := range lines {
		if strings.Contains(string(l), `"sequence":5,`) {
			second = string(l)[strings.Index(string(l), `"execution_id":"`)+len(`"execution_id":"`):][:32]
		}
	}
	require.NotEmpty(t, second)
	res, err = r.client.ListAuditEvents(testContext(t), &stage4v1.ListAuditEventsRequest{ExecutionId: second})
	require.Equal(t, codes.DataLoss, status.Code(err), "filtered: %v, %d events", err, len(res.GetAuditEvents()))
	require.Equal(t, stage4v1.ErrorReason_AUDIT_READ_FAILED.String(), reasonOf(err))
}

// TestOneSigningKeyPerDatabase: a replica started with another
// --audit-signing-key on a database that one key signs refuses to start
// (exit 2), naming both keys, and the shared checkpoint stays the first
// key's. A rotation is explicit: a replica signing with the old and the
// new key together is accepted, its checkpoints carry both signatures,
// and then the new key alone is accepted, the old one no longer.
func TestOneSigningKeyPerDatabase(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	oldKey, oldVkey := signingKeyFile(t, "stage4.test/audit")
	newKey, newVkey := signingKeyFile(t, "stage4.test/audit")
	r1 := startReplica(t, s3Addr, url, "r1", "--audit-signing-key", oldKey)
	r1.execute(t, 1)
	_, signed := r1.waitCheckpoint(t, oldVkey, 3)

	serve := func(name string, keys ...string) *proc {
		args := []string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--stage3-addr", s3Addr, "--stage3-insecure",
			"--audit-log", url, "--replica-name", name}
		for _, k := range keys {
			args = append(args, "--audit-signing-key", k)
		}
		return start(t, nil, args...)
	}
	other := serve("r2", newKey)
	require.Equal(t, 2, other.exitCode(t))
	msg := other.stderr.String()
	require.Contains(t, msg, "the store pins the checkpoint verifier keys "+keyID(t, oldVkey))
	require.Contains(t, msg, "this Stage-4 signs with "+keyID(t, newVkey))
	require.Equal(t, string(signed), string(storedCheckpoint(t, url)), "the shared checkpoint is untouched")
	transcript(t, "a replica with another key: "+lastLine(msg))

	// The rotation: both keys, then the new one alone.
	require.Equal(t, 0, r1.stop(t))
	both := startReplica(t, s3Addr, url, "r1", "--audit-signing-key", oldKey, "--audit-signing-key", newKey)
	both.execute(t, 1)
	_, bothMsg := both.waitCheckpoint(t, oldVkey, 6)
	both.waitCheckpoint(t, newVkey, 6)
	require.Equal(t, 2, strings.Count(string(bothMsg), "\n\u2014 "), "signed by both keys:\n%s", bothMsg)
	require.Equal(t, 0, both.stop(t))
	rotated := startReplica(t, s3Addr, url, "r1", "--audit-signing-key", newKey)
	rotated.execute(t, 1)
	rotated.waitCheckpoint(t, newVkey, 9)
	require.Equal(t, 0, rotated.stop(t))
	old := serve("r1", oldKey)
	require.Equal(t, 2, old.exitCode(t), "the retired key is refused:\n%s", old.stderr.String())
}

// keyID is a verifier key's <name>+<hash>.
func keyID(t *testing.T, vkey string) string {
	t.Helper()
	parts := strings.SplitN(vkey, "+", 3)
	require.Len(t, parts, 3)
	return parts[0] + "+" + parts[1]
}
