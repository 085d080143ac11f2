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
	"google.golang.org/grpc/credentials/insecure"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/testkit"
)

// startPGServe starts "stage4 serve" on the database at url under replica
// name, in front of the Stage-3 at stage3Addr, with extra flags, and
// connects a client.
func startPGServe(t *testing.T, stage3Addr, url, name string, extra ...string) (*proc, *grpc.ClientConn) {
	t.Helper()
	s4 := start(t, nil, append([]string{"serve", "--audit-readers", "*", "--listen", "127.0.0.1:0", "--metrics-listen", "",
		"--stage3-addr", stage3Addr, "--stage3-insecure",
		"--audit-log", url, "--replica-name", name}, extra...)...)
	addr, _ := s4.servingAddr(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return s4, conn
}

// dbEvents reads the log behind the gateway's back: the event types of
// each execution in log order, and the phase of each EXECUTION_FAILED.
func dbEvents(t *testing.T, url string) (types map[string][]string, phases map[string][]string) {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT execution_id, type, record FROM audit_records ORDER BY sequence")
	require.NoError(t, err)
	types, phases = map[string][]string{}, map[string][]string{}
	for rows.Next() {
		var id, typ string
		var record []byte
		require.NoError(t, rows.Scan(&id, &typ, &record))
		types[id] = append(types[id], typ)
		if typ == stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED.String() {
			var r struct {
				Details map[string]any `json:"details"`
			}
			require.NoError(t, json.Unmarshal(record, &r))
			phases[id] = append(phases[id], fmt.Sprint(r.Details["phase"]))
		}
	}
	require.NoError(t, rows.Err())
	return types, phases
}

// waitNoSessions polls until no session other than its own is connected
// to the database at url: the server has noticed that a killed process's
// connections are gone, and released the advisory lock on its replica
// name with them.
func waitNoSessions(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testContext(t), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	for {
		var n int
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&n))
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d sessions of the killed process still open", n)
		case <-time.After(20 * time.Millisecond): // polling the server's view, with a deadline
		}
	}
}

// TestServeKilledWithCallsInFlight kills "stage4 serve" (SIGKILL) on a
// PostgreSQL log while three plans hang in Stage-3, which leaves three
// open executions (EXECUTION_STARTED without a terminal event). The next
// process under the same --replica-name closes them at start, each with
// exactly one EXECUTION_FAILED of phase "interrupted", before it serves,
// and "stage4 audit verify URL" finds the log intact.
func TestServeKilledWithCallsInFlight(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0", "--hang")
	s3Addr, _ := s3.servingAddr(t)
	s4, conn := startPGServe(t, s3Addr, url, "r1")
	ctx := testContext(t)

	const inFlight = 3
	var ids []string
	for range inFlight {
		_, id := testkit.StartExecutePlan(ctx, t, conn, testkit.Plan(t))
		ids = append(ids, id)
	}
	// Stage-3 logs "started call" as each arrives: all are in flight.
	started := 0
	s3.stderr.waitFor(t, fmt.Sprintf("%d started calls", inFlight), func(line string) bool {
		if strings.Contains(line, `"msg":"started call"`) && strings.Contains(line, "ExecuteMultiDomainPlan") {
			started++
		}
		return started == inFlight
	})
	require.NoError(t, s4.cmd.Process.Signal(syscall.SIGKILL))
	s4.exitCode(t)

	types, _ := dbEvents(t, url)
	require.Len(t, types, inFlight)
	for _, id := range ids {
		require.Equal(t, []string{"AUDIT_EVENT_TYPE_PLAN_RECEIVED", "AUDIT_EVENT_TYPE_EXECUTION_STARTED"}, types[id],
			"execution %s is open", id)
	}

	waitNoSessions(t, url)
	restarted, conn := startPGServe(t, s3Addr, url, "r1")
	// Closed before "serving": by Log.New at start.
	closed := restarted.stderr.waitForLog(t, "closed executions left open by a stopped Stage-4 process", nil)
	require.ElementsMatch(t, ids, closed["execution_ids"])

	types, phases := dbEvents(t, url)
	require.Len(t, types, inFlight)
	for _, id := range ids {
		require.Equal(t, []string{"AUDIT_EVENT_TYPE_PLAN_RECEIVED", "AUDIT_EVENT_TYPE_EXECUTION_STARTED",
			"AUDIT_EVENT_TYPE_EXECUTION_FAILED"}, types[id], "execution %s", id)
		require.Equal(t, []string{audit.PhaseInterrupted}, phases[id], "execution %s", id)
		// What a caller sees through the restarted gateway.
		res, err := stage4v1.NewStage4ServiceClient(conn).ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{ExecutionId: id})
		require.NoError(t, err)
		require.Len(t, res.GetAuditEvents(), 3)
		require.Equal(t, audit.PhaseInterrupted, res.GetAuditEvents()[2].GetDetails().GetFields()["phase"].GetStringValue())
	}

	code, stdout, stderr := runStage4(t, nil, "audit", "verify", url)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	require.Contains(t, stdout, fmt.Sprintf("OK %d records", 3*inFlight))
}

// TestAuditVerifyDatabase runs "stage4 audit verify URL" on a PostgreSQL
// log: exit 0 when intact, 1 naming the sequence of a record altered
// with UPDATE, 2 when the database cannot be reached.
func TestAuditVerifyDatabase(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	store, err := pgstore.Open(testContext(t), url, pgstore.WithReplicaName("writer"))
	require.NoError(t, err)
	lg, err := audit.New(store)
	require.NoError(t, err)
	for i := range 3 {
		_, err := lg.Append(testContext(t), audit.Event{
			Type:        audit.PlanReceived,
			ExecutionID: fmt.Sprint("exec-", i),
			PlanID:      "hmac-sha256:plan",
			UserID:      "alice",
			Details:     audit.Details{"note": "original"},
		})
		require.NoError(t, err)
	}
	require.NoError(t, lg.Close())

	tests := []struct {
		name       string
		damage     string // SQL run before verifying, in order
		url        string
		wantCode   int
		wantStdout string
	}{
		{name: "intact", url: url, wantCode: 0, wantStdout: "OK 3 records"},
		{
			name: "record altered",
			// The columns still match; only the record's bytes, which
			// its hash covers, changed.
			damage: `UPDATE audit_records SET record = convert_to(replace(convert_from(record, 'UTF8'),
				'"original"', '"tampered"'), 'UTF8') WHERE sequence = 2`,
			url: url, wantCode: 1, wantStdout: "DAMAGED at sequence 2",
		},
		{
			name:     "unreachable",
			url:      "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2",
			wantCode: 2,
		},
	}
	for _, tt := range tests { // in order: the damage stays for the cases after it
		t.Run(tt.name, func(t *testing.T) {
			if tt.damage != "" {
				pgtest.Exec(t, url, tt.damage)
			}
			code, stdout, stderr := runStage4(t, nil, "audit", "verify", tt.url)
			require.Equal(t, tt.wantCode, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Contains(t, stdout, tt.wantStdout)
			if tt.wantCode == 2 {
				require.NotContains(t, stdout, "DAMAGED")
				require.Contains(t, stderr, "127.0.0.1:1")
			}
		})
	}
}
