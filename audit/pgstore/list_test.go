package pgstore_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/internal/pgtest"
)

// TestListUsesIndexes: on a log of 50,000 rows, the plan for each filter
// is a scan of that filter's (column, sequence) index, never a scan of
// the table, so that looking up one execution costs the same however long
// the log grows. The rows are placeholders written with SQL: only the
// planner sees them.
func TestListUsesIndexes(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	open(t, url)
	pgtest.Exec(t, url, `INSERT INTO audit_records (sequence, time, type, execution_id, plan_id, user_id, hash, record, tree)
		SELECT i, now(), (ARRAY['AUDIT_EVENT_TYPE_PLAN_RECEIVED', 'AUDIT_EVENT_TYPE_EXECUTION_STARTED',
			'AUDIT_EVENT_TYPE_EXECUTION_COMPLETED', 'AUDIT_EVENT_TYPE_EXECUTION_FAILED'])[1 + i % 4],
			'exec-' || (i / 3), 'plan-' || (i % 5000), 'user-' || (i % 1000), sha256(int8send(i)), '{}', sha256(int8send(i))
		FROM generate_series(1, 50000) AS i`)
	pgtest.Exec(t, url, "ANALYZE audit_records")
	pgtest.Exec(t, url, "UPDATE audit_head SET sequence = 50000, durable_sequence = 50000")
	tests := []struct {
		name  string
		q     audit.Query
		index string
	}{
		{"execution", audit.Query{Filter: audit.Filter{ExecutionID: "exec-4242"}}, "audit_records_execution_id"},
		{"execution, later page", audit.Query{Filter: audit.Filter{ExecutionID: "exec-4242"}, From: audit.Cursor{Sequence: 12727}}, "audit_records_execution_id"},
		{"plan", audit.Query{Filter: audit.Filter{PlanID: "plan-17"}}, "audit_records_plan_id"},
		{"user", audit.Query{Filter: audit.Filter{UserID: "user-17"}}, "audit_records_user_id"},
		// Either index reads at most the budget's range.
		{"type within a scan budget", audit.Query{Filter: audit.Filter{Type: audit.ExecutionFailed}, MaxScanned: 1000}, "audit_records_"},
		{"no filter, deep page", audit.Query{From: audit.Cursor{Sequence: 40000}}, "audit_records_pkey"},
	}
	conn, err := pgx.Connect(testCtx(t), url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.q.Limit = 100
			sql, args := pgstore.ListQuery(tt.q)
			rows, err := conn.Query(testCtx(t), "EXPLAIN "+sql, args...)
			require.NoError(t, err)
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			plan := strings.Join(lines, "\n")
			require.Contains(t, plan, "Index", plan)
			require.Contains(t, plan, tt.index, plan)
			require.NotContains(t, plan, "Seq Scan on audit_records", plan)
		})
	}
}

// TestOpenRefusesNewerSchema: a binary does not write to a schema newer
// than it knows.
func TestOpenRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	open(t, url).Close()
	pgtest.Exec(t, url, "INSERT INTO audit_schema_version (version) VALUES (99)")
	_, err := pgstore.Open(testCtx(t), url)
	require.ErrorContains(t, err, "newer than this binary")
}
