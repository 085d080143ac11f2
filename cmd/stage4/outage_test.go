package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
)

// TestOutageClosesTheExecutionWhenTheStoreIsBack: an execution is with
// Stage-3 when its PostgreSQL audit store stops; Stage-3 answers during
// the outage, so the caller gets UNKNOWN/OUTCOME_UNKNOWN (its terminal
// event cannot be written). Once the database is back, the replica that
// holds the answer writes that terminal event, with what Stage-3 answered
// and what the caller was told, within seconds of serving again and
// exactly once, with one replica and with a second one whose sweep must
// not close it too.
func TestOutageClosesTheExecutionWhenTheStoreIsBack(t *testing.T) {
	t.Parallel()
	for _, replicas := range []int{1, 2} {
		t.Run(fmt.Sprint(replicas, " replicas"), func(t *testing.T) {
			t.Parallel()
			cluster := pgtest.StartCluster(t)
			url := pgtest.NewDatabaseOn(t, cluster.URL())
			// Stage-3 takes its time: the database stops while it works.
			s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0", "--delay", "1500ms")
			s3Addr, _ := s3.servingAddr(t)
			var conns []*grpc.ClientConn
			for i := range replicas {
				_, conn := startPGServe(t, s3Addr, url, fmt.Sprint("replica-", i), "--stage3-max-deadline", "5s")
				conns = append(conns, conn)
			}
			ctx := testContext(t)
			owner := conns[0]
			watch, err := healthpb.NewHealthClient(owner).Watch(ctx, &healthpb.HealthCheckRequest{Service: "stage4.v1.Stage4Service"})
			require.NoError(t, err)
			waitHealthWithin(t, watch, healthpb.HealthCheckResponse_SERVING, 10*time.Second)

			stream, id := testkit.StartExecutePlan(ctx, t, owner, testkit.Plan(t))
			s3.stderr.waitFor(t, "Stage-3 received the plan", func(line string) bool {
				return strings.Contains(line, `"msg":"started call"`) && strings.Contains(line, "ExecuteMultiDomainPlan")
			})
			cluster.Stop()
			err = stream.RecvMsg(&stage4v1.ExecutePlanResponse{})
			require.Equal(t, codes.Unknown, status.Code(err), "%v", err)
			require.Equal(t, rpcerr.OutcomeUnknown, rpcerr.Reason(err))
			waitHealthWithin(t, watch, healthpb.HealthCheckResponse_NOT_SERVING, 10*time.Second)

			cluster.Start()
			restarted := time.Now()
			waitHealthWithin(t, watch, healthpb.HealthCheckResponse_SERVING, 15*time.Second)
			serving := time.Now()
			events := waitTerminal(t, url, id, 5*time.Second)
			t.Logf("terminal event of %s written %v after the database was back (the replica served again after %v; the event is written first): %s",
				id, time.Since(restarted).Round(time.Millisecond), serving.Sub(restarted).Round(time.Millisecond), events[2].raw)

			require.Equal(t, []string{"AUDIT_EVENT_TYPE_PLAN_RECEIVED", "AUDIT_EVENT_TYPE_EXECUTION_STARTED", "AUDIT_EVENT_TYPE_EXECUTION_COMPLETED"},
				recordTypes(events), "exactly one terminal event: what Stage-3 answered")
			late := events[2].details
			require.Equal(t, true, late["recorded_late"])
			require.Equal(t, "OUTCOME_UNKNOWN", late["caller_told"])
			require.Regexp(t, `^hmac-sha256:[0-9a-f]+$`, late["result_digest"], "Stage-3's answer, by its keyed digest")
			require.EqualValues(t, 3, late["step_count"])

			// The other replica's sweeps run on; nothing closes it twice.
			for _, conn := range conns {
				_, err := stage4v1.NewStage4ServiceClient(conn).ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
				require.NoError(t, err)
			}
			require.Len(t, recordsOf(t, url, id), 3)
			code, stdout, stderr := runStage4(t, nil, "audit", "verify", url)
			require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
		})
	}
}

// TestOutageKeyedRetryGetsTheFirstAnswer: the same outage, with a
// request_id on the call. The terminal event written late settles the key
// as the caller's answer did: a retry with the same request_id, once the
// store is back, gets UNKNOWN/OUTCOME_UNKNOWN naming the first execution,
// and Stage-3 is not called again.
func TestOutageKeyedRetryGetsTheFirstAnswer(t *testing.T) {
	t.Parallel()
	cluster := pgtest.StartCluster(t)
	url := pgtest.NewDatabaseOn(t, cluster.URL())
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0", "--delay", "1500ms")
	s3Addr, _ := s3.servingAddr(t)
	_, conn := startPGServe(t, s3Addr, url, "keyed", "--stage3-max-deadline", "5s")
	ctx := testContext(t)
	watch, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: "stage4.v1.Stage4Service"})
	require.NoError(t, err)
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_SERVING, 10*time.Second)

	req := &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t), RequestId: "7d0c6a52-5f0e-4c1b-9d6e-2b8f3a9e4c11"}
	stream, id := testkit.StartExecute(ctx, t, conn, req)
	s3.stderr.waitFor(t, "Stage-3 received the plan", func(line string) bool {
		return strings.Contains(line, `"msg":"started call"`) && strings.Contains(line, "ExecuteMultiDomainPlan")
	})
	cluster.Stop()
	err = stream.RecvMsg(&stage4v1.ExecutePlanResponse{})
	require.Equal(t, codes.Unknown, status.Code(err), "%v", err)
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_NOT_SERVING, 10*time.Second)
	cluster.Start()
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_SERVING, 15*time.Second)
	events := waitTerminal(t, url, id, 5*time.Second)
	require.Equal(t, true, events[2].details["recorded_late"])

	calls := stage3Started(s3)
	_, err = stage4v1.NewStage4ServiceClient(conn).ExecutePlan(ctx, req)
	require.Equal(t, codes.Unknown, status.Code(err), "%v", err)
	require.Equal(t, rpcerr.OutcomeUnknown, rpcerr.Reason(err))
	require.Equal(t, id, rpcerr.Info(err).GetMetadata()["execution_id"], "the retry names the first execution")
	require.Equal(t, calls, stage3Started(s3), "the retry did not run the plan again")
	require.Len(t, recordsOf(t, url, id), 3)
}

// TestOutageWithAKilledReplica: a replica killed while its execution is
// with Stage-3 during an outage cannot write the terminal event late; the
// restart of the same replica closes it as interrupted at once, as before.
func TestOutageWithAKilledReplica(t *testing.T) {
	t.Parallel()
	cluster := pgtest.StartCluster(t)
	url := pgtest.NewDatabaseOn(t, cluster.URL())
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0", "--hang")
	s3Addr, _ := s3.servingAddr(t)
	s4, conn := startPGServe(t, s3Addr, url, "killed")
	ctx := testContext(t)
	_, id := testkit.StartExecutePlan(ctx, t, conn, testkit.Plan(t))
	s3.stderr.waitFor(t, "Stage-3 received the plan", func(line string) bool {
		return strings.Contains(line, `"msg":"started call"`) && strings.Contains(line, "ExecuteMultiDomainPlan")
	})
	cluster.Stop()
	require.NoError(t, s4.cmd.Process.Signal(syscall.SIGKILL))
	s4.exitCode(t)
	cluster.Start()
	waitNoSessions(t, url)
	restarted, _ := startPGServe(t, s3Addr, url, "killed")
	closed := restarted.stderr.waitForLog(t, "closed executions left open by a stopped Stage-4 process", nil)
	require.Equal(t, []any{id}, closed["execution_ids"])
	events := recordsOf(t, url, id)
	require.Equal(t, []string{"AUDIT_EVENT_TYPE_PLAN_RECEIVED", "AUDIT_EVENT_TYPE_EXECUTION_STARTED", "AUDIT_EVENT_TYPE_EXECUTION_FAILED"}, recordTypes(events))
	require.Equal(t, "interrupted", events[2].details["phase"])
}

// dbRecord is one stored record of an execution.
type dbRecord struct {
	typ     string
	details map[string]any
	raw     string
}

// recordsOf reads the records of execution id behind the gateway's back.
func recordsOf(t *testing.T, url, id string) []dbRecord {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT type, record FROM audit_records WHERE execution_id = $1 ORDER BY sequence", id)
	require.NoError(t, err)
	var out []dbRecord
	for rows.Next() {
		var r dbRecord
		var record []byte
		require.NoError(t, rows.Scan(&r.typ, &record))
		var parsed struct {
			Details map[string]any `json:"details"`
		}
		require.NoError(t, json.Unmarshal(record, &parsed))
		r.details, r.raw = parsed.Details, string(record)
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

// waitTerminal polls the database until execution id has a terminal
// event, within bound.
func waitTerminal(t *testing.T, url, id string, bound time.Duration) []dbRecord {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		events := recordsOf(t, url, id)
		if len(events) > 0 && strings.Contains(events[len(events)-1].typ, "EXECUTION_COMPLETED") || len(events) > 0 && strings.Contains(events[len(events)-1].typ, "EXECUTION_FAILED") {
			return events
		}
		if time.Now().After(deadline) {
			t.Fatalf("execution %s has no terminal event %v after its replica served again: %v", id, bound, recordTypes(events))
		}
		time.Sleep(50 * time.Millisecond) // polling the database, which announces nothing, with a deadline
	}
}

func recordTypes(events []dbRecord) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.typ
	}
	return out
}
