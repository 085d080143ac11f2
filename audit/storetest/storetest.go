// Package storetest is the conformance suite of audit.Store: every store
// (the file, PostgreSQL) passes the same tests, so that the code above the
// seam need not know which one it has. A store's own tests call Run with
// a way to make empty storage and open stores on it.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// Opener opens a store on one log's storage. The suite calls it again,
// after closing the store it returned, to stand for the process
// restarting on the same data; a store shared by replicas must open under
// the same replica name each time.
type Opener func(t *testing.T) audit.Store

// Run runs the conformance suite. newLog makes new, empty storage for one
// test (a temporary file, a new database) and returns the Opener for it;
// it removes the storage with t.Cleanup. Tests run in parallel, each on
// storage of its own. The suite closes the stores it opens.
func Run(t *testing.T, newLog func(t *testing.T) Opener) {
	tests := []struct {
		name string
		run  func(t *testing.T, open Opener)
	}{
		{"EmptyLog", testEmptyLog},
		{"AppendExtendsHead", testAppendExtendsHead},
		{"BuildErrorStoresNothing", testBuildErrorStoresNothing},
		{"DurableAndNonDurableSurviveRestart", testSurviveRestart},
		{"ListFilters", testListFilters},
		{"ListPaging", testListPaging},
		{"PageTokenBoundToFilters", testPageTokenBound},
		{"PageTokenSurvivesRestart", testPageTokenSurvivesRestart},
		{"InterruptedAfterRestart", testInterruptedAfterRestart},
		{"InterruptedClaimEndsWithClaimer", testInterruptedClaimEndsWithClaimer},
		{"Ping", testPing},
		{"AppendAfterCloseFails", testAppendAfterClose},
		{"FingerprintKeyIsKept", testFingerprintKeyIsKept},
		{"TreeHashesAndEdgeSurviveRestart", testTreeSurvivesRestart},
		{"ReadHashesBeyondTheTreeFails", testReadHashesBeyondTree},
		{"DurableHeadFollowsDurableAppends", testDurableHead},
		{"CheckpointIsKept", testCheckpointIsKept},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, newLog(t))
		})
	}
}

// openStore opens a store and closes it at the end of the test unless the
// test closed it first (a restart).
func openStore(t *testing.T, open Opener) audit.Store {
	t.Helper()
	s := open(t)
	t.Cleanup(func() { s.Close() })
	return s
}

// restart closes s and opens the store again on the same data.
func restart(t *testing.T, s audit.Store, open Opener) audit.Store {
	t.Helper()
	require.NoError(t, s.Close())
	return openStore(t, open)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// event makes an event with details that exercise the encoder: escaping,
// non-ASCII text, a number.
func event(typ stage4v1.AuditEventType, exec, plan, user string) *stage4v1.AuditEvent {
	return &stage4v1.AuditEvent{
		Type:        typ,
		ExecutionId: exec,
		PlanId:      plan,
		UserId:      user,
		Details: &structpb.Struct{Fields: map[string]*structpb.Value{
			"note": structpb.NewStringValue("storetest \"quoted\" \u00e9"),
			"n":    structpb.NewNumberValue(1.5),
		}},
	}
}

const (
	received  = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED
	started   = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED
	completed = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED
	failed    = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED
)

// appendEvents appends evs as one batch and returns the records stored.
func appendEvents(t *testing.T, s audit.Store, durable bool, evs ...*stage4v1.AuditEvent) []audit.Record {
	t.Helper()
	var recs []audit.Record
	err := s.Append(ctx(t), durable, func(h audit.Head) ([]audit.Record, error) {
		var err error
		recs, err = audit.RenderRecords(h, time.Now(), evs)
		return recs, err
	})
	require.NoError(t, err)
	return recs
}

// headOf returns the head a build sees now, storing nothing.
func headOf(t *testing.T, s audit.Store) audit.Head {
	t.Helper()
	var head audit.Head
	errLook := errors.New("only looking")
	err := s.Append(ctx(t), false, func(h audit.Head) ([]audit.Record, error) {
		head = h
		return nil, errLook
	})
	require.ErrorIs(t, err, errLook)
	return head
}

// listAll follows the page tokens of q to the end.
func listAll(t *testing.T, s audit.Store, q audit.Query) []*stage4v1.AuditEvent {
	t.Helper()
	if q.PageSize == 0 {
		q.PageSize = 1000
	}
	var all []*stage4v1.AuditEvent
	for range 10000 {
		page, err := s.List(ctx(t), q)
		require.NoError(t, err)
		all = append(all, page.Events...)
		if page.NextPageToken == "" {
			return all
		}
		q.PageToken = page.NextPageToken
	}
	t.Fatal("listing did not end")
	return nil
}

// decoded returns the events that recs encode, checking them as one chain
// from sequence 1 on the way.
func decoded(t *testing.T, recs []audit.Record) []*stage4v1.AuditEvent {
	t.Helper()
	var c audit.ChainChecker
	evs := make([]*stage4v1.AuditEvent, len(recs))
	for i := range recs {
		ev, err := c.Check(recs[i].Line)
		require.NoError(t, err)
		evs[i] = ev
	}
	return evs
}

func requireEvents(t *testing.T, want, got []*stage4v1.AuditEvent) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.Truef(t, proto.Equal(want[i], got[i]), "event %d:\nwant %v\ngot  %v", i, want[i], got[i])
	}
}

func testEmptyLog(t *testing.T, open Opener) {
	s := openStore(t, open)
	require.Equal(t, audit.Head{}, headOf(t, s))
	page, err := s.List(ctx(t), audit.Query{PageSize: 10})
	require.NoError(t, err)
	require.Empty(t, page.Events)
	require.Empty(t, page.NextPageToken)
	open2, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, open2)
}

func testAppendExtendsHead(t *testing.T, open Opener) {
	s := openStore(t, open)
	var all []audit.Record
	for i, size := range []int{1, 3, 2} {
		head := headOf(t, s)
		require.Equal(t, headAfter(t, all), head, "batch %d", i)
		var evs []*stage4v1.AuditEvent
		for j := range size {
			evs = append(evs, event(received, fmt.Sprintf("exec-%d-%d", i, j), "plan", "user"))
		}
		builds := 0
		err := s.Append(ctx(t), true, func(h audit.Head) ([]audit.Record, error) {
			builds++
			recs, err := audit.RenderRecords(h, time.Now(), evs)
			all = append(all, recs...)
			return recs, err
		})
		require.NoError(t, err)
		require.Equal(t, 1, builds, "build is called once per Append")
	}
	// decoded checks that the batches form one gapless chain from 1, and
	// List returns exactly those records.
	requireEvents(t, decoded(t, all), listAll(t, s, audit.Query{}))
}

func testBuildErrorStoresNothing(t *testing.T, open Opener) {
	s := openStore(t, open)
	recs := appendEvents(t, s, true, event(received, "a", "p", "u"), event(failed, "a", "p", "u"))
	errBuild := errors.New("build failed")
	err := s.Append(ctx(t), true, func(h audit.Head) ([]audit.Record, error) {
		return nil, errBuild
	})
	require.ErrorIs(t, err, errBuild)
	require.Equal(t, headAfter(t, recs), headOf(t, s))
	requireEvents(t, decoded(t, recs), listAll(t, s, audit.Query{}))
}

func testSurviveRestart(t *testing.T, open Opener) {
	s := openStore(t, open)
	recs := appendEvents(t, s, false, event(received, "a", "p", "u"))
	recs = append(recs, appendEvents(t, s, true, event(started, "a", "p", "u"))...)
	s = restart(t, s, open)
	requireEvents(t, decoded(t, recs), listAll(t, s, audit.Query{}))
	require.Equal(t, headAfter(t, recs), headOf(t, s))
}

// fixture appends a small log with every filter field varied and returns
// its events.
func fixture(t *testing.T, s audit.Store) []*stage4v1.AuditEvent {
	t.Helper()
	var recs []audit.Record
	recs = append(recs, appendEvents(t, s, true,
		event(received, "e1", "plan-a", "alice"),
		event(received, "e2", "plan-b", "bob"))...)
	recs = append(recs, appendEvents(t, s, true,
		event(started, "e1", "plan-a", "alice"),
		event(failed, "e2", "plan-b", "bob"),
		event(received, "e3", "plan-a", "bob"))...)
	recs = append(recs, appendEvents(t, s, true,
		event(completed, "e1", "plan-a", "alice"),
		event(started, "e3", "plan-a", "bob"),
		event(failed, "e3", "plan-a", "bob"))...)
	return decoded(t, recs)
}

func testListFilters(t *testing.T, open Opener) {
	s := openStore(t, open)
	evs := fixture(t, s)
	tests := []struct {
		name string
		q    audit.Query
		want []int // indexes into evs
	}{
		{"all", audit.Query{}, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{"execution", audit.Query{ExecutionID: "e3"}, []int{4, 6, 7}},
		{"plan", audit.Query{PlanID: "plan-b"}, []int{1, 3}},
		{"user", audit.Query{UserID: "alice"}, []int{0, 2, 5}},
		{"type", audit.Query{Type: failed}, []int{3, 7}},
		{"all filters", audit.Query{ExecutionID: "e3", PlanID: "plan-a", UserID: "bob", Type: started}, []int{6}},
		{"user and plan", audit.Query{UserID: "bob", PlanID: "plan-a"}, []int{4, 6, 7}},
		{"unknown execution", audit.Query{ExecutionID: "no-such-execution"}, nil},
		{"filters that exclude each other", audit.Query{ExecutionID: "e1", UserID: "bob"}, nil},
		{"value with a quote", audit.Query{UserID: `bob"`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want []*stage4v1.AuditEvent
			for _, i := range tt.want {
				want = append(want, evs[i])
			}
			got := listAll(t, s, tt.q)
			requireEvents(t, want, got)
		})
	}
}

func testListPaging(t *testing.T, open Opener) {
	s := openStore(t, open)
	evs := fixture(t, s)
	for _, size := range []int{1, 2, 3, 8, 9} {
		t.Run(fmt.Sprint("page size ", size), func(t *testing.T) {
			q := audit.Query{PageSize: size}
			var got []*stage4v1.AuditEvent
			for pages := 1; ; pages++ {
				require.LessOrEqual(t, pages, len(evs)+1, "listing does not end")
				page, err := s.List(ctx(t), q)
				require.NoError(t, err)
				require.LessOrEqual(t, len(page.Events), size)
				got = append(got, page.Events...)
				if page.NextPageToken == "" {
					break
				}
				q.PageToken = page.NextPageToken
			}
			requireEvents(t, evs, got)
		})
	}
	t.Run("filtered", func(t *testing.T) {
		want := []*stage4v1.AuditEvent{evs[4], evs[6], evs[7]}
		requireEvents(t, want, listAll(t, s, audit.Query{ExecutionID: "e3", PageSize: 1}))
	})
}

func testPageTokenBound(t *testing.T, open Opener) {
	s := openStore(t, open)
	fixture(t, s)
	page, err := s.List(ctx(t), audit.Query{UserID: "bob", PageSize: 1})
	require.NoError(t, err)
	require.NotEmpty(t, page.NextPageToken)
	tok := page.NextPageToken
	tests := []struct {
		name string
		q    audit.Query
	}{
		{"other user", audit.Query{UserID: "alice", PageToken: tok}},
		{"no filter", audit.Query{PageToken: tok}},
		{"added filter", audit.Query{UserID: "bob", Type: received, PageToken: tok}},
		{"garbage", audit.Query{UserID: "bob", PageToken: "not a token"}},
		{"truncated", audit.Query{UserID: "bob", PageToken: tok[:len(tok)-2]}},
		{"altered", audit.Query{UserID: "bob", PageToken: alter(tok)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.q.PageSize = 10
			_, err := s.List(ctx(t), tt.q)
			require.ErrorIs(t, err, audit.ErrInvalidPageToken)
		})
	}
	_, err = s.List(ctx(t), audit.Query{UserID: "bob", PageSize: 10, PageToken: tok})
	require.NoError(t, err, "the token still works with its own filters")
}

// alter changes one character in the middle of a token, keeping it
// base64url.
func alter(tok string) string {
	b := []byte(tok)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func testPageTokenSurvivesRestart(t *testing.T, open Opener) {
	s := openStore(t, open)
	evs := fixture(t, s)
	page, err := s.List(ctx(t), audit.Query{PageSize: 3})
	require.NoError(t, err)
	s = restart(t, s, open)
	got := listAll(t, s, audit.Query{PageSize: 3, PageToken: page.NextPageToken})
	requireEvents(t, evs[3:], got)
}

func testInterruptedAfterRestart(t *testing.T, open Opener) {
	s := openStore(t, open)
	appendEvents(t, s, true,
		event(received, "only-received", "p1", "u1"),
		event(received, "completed", "p2", "u2"),
		event(received, "started", "p3", "u3"))
	appendEvents(t, s, false, event(received, "opened-and-closed", "p4", "u4"), event(failed, "opened-and-closed", "p4", "u4"))
	appendEvents(t, s, true,
		event(started, "completed", "p2", "u2"),
		event(started, "started", "p3", "u3"),
		event(completed, "completed", "p2", "u2"))
	open1, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, open1, "this process's own executions are running, not interrupted")

	s = restart(t, s, open)
	got, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []audit.OpenExecution{
		{ExecutionID: "only-received", PlanID: "p1", UserID: "u1", LastType: received, Sequence: 1},
		{ExecutionID: "started", PlanID: "p3", UserID: "u3", LastType: started, Sequence: 3},
	}, got)
	again, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, again, "each open execution is handed out once")

	var closing []*stage4v1.AuditEvent
	for _, e := range got {
		closing = append(closing, event(failed, e.ExecutionID, e.PlanID, e.UserID))
	}
	appendEvents(t, s, true, closing...)
	s = restart(t, s, open)
	after, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, after, "closed executions are never handed out")
}

// testInterruptedClaimEndsWithClaimer: an execution handed out to a
// process that stopped before closing it is handed out again after the
// next restart; it is still open.
func testInterruptedClaimEndsWithClaimer(t *testing.T, open Opener) {
	s := openStore(t, open)
	appendEvents(t, s, true, event(received, "x", "p", "u"), event(started, "x", "p", "u"))
	s = restart(t, s, open)
	got, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Len(t, got, 1)
	s = restart(t, s, open)
	got, err = s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []audit.OpenExecution{{ExecutionID: "x", PlanID: "p", UserID: "u", LastType: started, Sequence: 1}}, got)
}

func testPing(t *testing.T, open Opener) {
	s := openStore(t, open)
	require.NoError(t, s.Ping(ctx(t)))
	appendEvents(t, s, true, event(received, "a", "p", "u"))
	require.NoError(t, s.Ping(ctx(t)))
}

func testAppendAfterClose(t *testing.T, open Opener) {
	s := open(t)
	appendEvents(t, s, true, event(received, "a", "p", "u"))
	require.NoError(t, s.Close())
	err := s.Append(ctx(t), true, func(h audit.Head) ([]audit.Record, error) {
		return audit.RenderRecords(h, time.Now(), []*stage4v1.AuditEvent{event(failed, "a", "p", "u")})
	})
	require.ErrorIs(t, err, audit.ErrClosed)
}

// testFingerprintKeyIsKept: a store has one secret key of 32 random bytes,
// the same after a restart, so that equal plans keep equal plan_ids.
func testFingerprintKeyIsKept(t *testing.T, open Opener) {
	s := openStore(t, open)
	key, err := s.FingerprintKey(ctx(t))
	require.NoError(t, err)
	require.Len(t, key, 32)
	require.NotEqual(t, make([]byte, 32), key)
	s = restart(t, s, open)
	again, err := s.FingerprintKey(ctx(t))
	require.NoError(t, err)
	require.Equal(t, key, again)
}
