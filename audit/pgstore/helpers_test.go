package pgstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
)

const (
	received  = audit.PlanReceived
	started   = audit.ExecutionStarted
	completed = audit.ExecutionCompleted
	failed    = audit.ExecutionFailed
)

func event(typ audit.EventType, exec, user string) audit.Event {
	return audit.Event{
		Type:        typ,
		ExecutionID: exec,
		PlanID:      "sha256:plan-" + exec,
		UserID:      user,
		Details:     audit.Details{"k": "v"},
	}
}

// renderer is a build function for evs; openUntil, when set, is stamped
// on the records that open an execution, as the log does.
func renderer(evs []audit.Event, openUntil time.Time, out *[]audit.Record) func(audit.Head) ([]audit.Record, error) {
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

func mustAppend(t testing.TB, s *pgstore.Store, evs ...audit.Event) []audit.Record {
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
func listAll(t testing.TB, s *pgstore.Store, q audit.Query) []audit.Event {
	t.Helper()
	q.Limit = 1000
	var all []audit.Event
	for {
		page, err := s.List(testCtx(t), q)
		require.NoError(t, err)
		all = append(all, page.Events...)
		if page.Done() {
			return all
		}
		q.From = page.Next
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
