package pgstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

const (
	received  = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED
	started   = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED
	completed = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED
	failed    = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED
)

func event(typ stage4v1.AuditEventType, exec, user string) *stage4v1.AuditEvent {
	return &stage4v1.AuditEvent{
		Type:        typ,
		ExecutionId: exec,
		PlanId:      "sha256:plan-" + exec,
		UserId:      user,
		Details:     &structpb.Struct{Fields: map[string]*structpb.Value{"k": structpb.NewStringValue("v")}},
	}
}

// renderer is a build function for evs; openUntil, when set, is stamped
// on the records that open an execution, as the log does.
func renderer(evs []*stage4v1.AuditEvent, openUntil time.Time, out *[]audit.Record) func(audit.Head) ([]audit.Record, error) {
	return func(h audit.Head) ([]audit.Record, error) {
		recs, err := audit.RenderRecords(h, time.Now(), evs)
		if err != nil {
			return nil, err
		}
		for i := range recs {
			if !recs[i].Terminal() {
				recs[i].OpenUntil = openUntil
			}
		}
		if out != nil {
			*out = recs
		}
		return recs, nil
	}
}

func mustAppend(t testing.TB, s *pgstore.Store, evs ...*stage4v1.AuditEvent) []audit.Record {
	t.Helper()
	var recs []audit.Record
	require.NoError(t, s.Append(testCtx(t), true, renderer(evs, time.Time{}, &recs)))
	return recs
}

func mustVerify(t testing.TB, url string) audit.VerifyResult {
	t.Helper()
	res, err := pgstore.Verify(testCtx(t), url)
	require.NoError(t, err)
	return res
}

// listAll lists every record of q, following page tokens.
func listAll(t testing.TB, s *pgstore.Store, q audit.Query) []*stage4v1.AuditEvent {
	t.Helper()
	q.PageSize = 1000
	var all []*stage4v1.AuditEvent
	for {
		page, err := s.List(testCtx(t), q)
		require.NoError(t, err)
		all = append(all, page.Events...)
		if page.NextPageToken == "" {
			return all
		}
		q.PageToken = page.NextPageToken
	}
}

// query runs one query returning one value, behind the store's back.
func query[T any](t testing.TB, url, sql string, args ...any) T {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var v T
	require.NoError(t, conn.QueryRow(testCtx(t), sql, args...).Scan(&v), sql)
	return v
}

func execID(replica, i int) string { return fmt.Sprintf("r%d-exec-%04d", replica, i) }
