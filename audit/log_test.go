package audit_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
)

// The Log's own tests, on the memory store: each part of the Log (writer,
// health supervisor, sweeper, reader) through the Log's API.

func newLog(t *testing.T, s audit.Store, opts ...audit.Option) *audit.Log {
	t.Helper()
	lg, err := audit.New(s, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { lg.Close() })
	return lg
}

func ev(typ audit.EventType, exec string) audit.Event {
	return audit.Event{Type: typ, ExecutionID: exec, PlanID: "plan", UserID: "alice", Details: audit.Details{"n": 1.0}}
}

// listAll pages through the log with f, pageSize events a page.
func listAll(t *testing.T, lg *audit.Log, f audit.Filter, pageSize int) []audit.Event {
	t.Helper()
	var all []audit.Event
	token := ""
	for range 10000 {
		evs, next, err := lg.List(context.Background(), f, pageSize, token)
		require.NoError(t, err)
		all = append(all, evs...)
		if next == "" {
			return all
		}
		token = next
	}
	t.Fatal("listing did not end")
	return nil
}

// TestAppendWritesTheChain: Append returns the event as written, chained
// to the one before, and the records verify as one chain.
func TestAppendWritesTheChain(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	lg := newLog(t, memstore.Open(st, ""))
	ctx := context.Background()
	first, err := lg.Append(ctx, ev(audit.PlanReceived, "e"))
	require.NoError(t, err)
	require.Equal(t, uint64(1), first.Sequence)
	require.Equal(t, audit.GenesisHash, first.PreviousHash)
	second, err := lg.Append(ctx, ev(audit.ExecutionStarted, "e"))
	require.NoError(t, err)
	require.Equal(t, uint64(2), second.Sequence)
	require.Equal(t, first.Hash, second.PreviousHash)
	got := listAll(t, lg, audit.Filter{}, 10)
	require.Len(t, got, 2)
	require.Equal(t, second.Hash, got[1].Hash)
	require.Equal(t, audit.Details{"n": 1.0}, got[1].Details)
	_, err = lg.Append(ctx, audit.Event{Type: audit.TypeUnspecified, ExecutionID: "e"})
	require.Error(t, err, "an event needs a type")
	_, err = lg.Append(ctx, audit.Event{Type: audit.PlanReceived, Details: audit.Details{"c": make(chan int)}})
	require.Error(t, err, "details are JSON values")
}

// TestUnsyncedBecomesDurableWithTheNext: an event queued with
// AppendUnsynced is not listed until the next Append is durable, and then
// both are.
func TestUnsyncedBecomesDurableWithTheNext(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	lg := newLog(t, memstore.Open(st, ""))
	ctx := context.Background()
	require.NoError(t, lg.AppendUnsynced(ctx, ev(audit.PlanReceived, "e")))
	_, err := lg.Append(ctx, ev(audit.ExecutionStarted, "e"))
	require.NoError(t, err)
	require.Len(t, st.Records(), 2, "both durable")
	require.Len(t, listAll(t, lg, audit.Filter{ExecutionID: "e"}, 1), 2)
}

// TestAFailedStoreRefusesNewExecutionsButTakesTerminalEvents: once an
// append fails, the log is unhealthy and refuses events that begin or
// continue an execution at once, while it still offers terminal events to
// the store, which may take them; a store that recovers makes the log
// healthy again at the next ping, and one that failed for good does not.
func TestAFailedStoreRefusesNewExecutionsButTakesTerminalEvents(t *testing.T) {
	t.Parallel()
	for _, permanent := range []bool{false, true} {
		t.Run(fmt.Sprintf("permanent=%v", permanent), func(t *testing.T) {
			t.Parallel()
			st := memstore.NewStorage()
			changes := make(chan error, 10)
			lg := newLog(t, memstore.Open(st, ""), audit.WithPingInterval(10*time.Millisecond),
				audit.WithHealthFunc(func(err error) { changes <- err }))
			ctx := context.Background()
			_, err := lg.Append(ctx, ev(audit.ExecutionStarted, "running"))
			require.NoError(t, err)

			st.Break(memstore.ErrBroken, permanent)
			_, err = lg.Append(ctx, ev(audit.PlanReceived, "new"))
			require.ErrorIs(t, err, audit.ErrUnavailable)
			require.ErrorIs(t, <-changes, audit.ErrUnavailable, "the health callback hears of it")
			require.ErrorIs(t, lg.Err(), audit.ErrUnavailable)
			_, err = lg.Append(ctx, ev(audit.PlanReceived, "newer"))
			require.ErrorIs(t, err, audit.ErrUnavailable, "refused at once while unhealthy")

			st.Heal()
			if permanent {
				_, err = lg.Append(ctx, ev(audit.ExecutionCompleted, "running"))
				require.ErrorIs(t, err, audit.ErrUnavailable, "a store failed for good takes nothing")
				require.Error(t, lg.Err())
				return
			}
			require.NoError(t, <-changes, "healthy again after a ping")
			_, err = lg.Append(ctx, ev(audit.ExecutionCompleted, "running"))
			require.NoError(t, err)
			_, err = lg.Append(ctx, ev(audit.PlanReceived, "later"))
			require.NoError(t, err)
		})
	}
}

// TestTerminalEventsAreOfferedToAnUnhealthyStore: while the log is
// unhealthy, a terminal event is still handed to the store (which on a
// full disk keeps room for it), and its caller gets the store's answer.
func TestTerminalEventsAreOfferedToAnUnhealthyStore(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	s := &refusingStore{Store: memstore.Open(st, "")}
	lg := newLog(t, s, audit.WithPingInterval(time.Hour))
	ctx := context.Background()
	_, err := lg.Append(ctx, ev(audit.ExecutionStarted, "running"))
	require.NoError(t, err)
	s.refuseOpening.Store(true)
	_, err = lg.Append(ctx, ev(audit.PlanReceived, "new"))
	require.ErrorIs(t, err, audit.ErrUnavailable)
	require.Error(t, lg.Err())
	done, err := lg.Append(ctx, ev(audit.ExecutionCompleted, "running"))
	require.NoError(t, err, "the terminal event was stored")
	require.Equal(t, uint64(2), done.Sequence)
}

// refusingStore refuses batches that hold an event which is not terminal,
// as a log directory on a full disk does.
type refusingStore struct {
	audit.Store
	refuseOpening atomic.Bool
}

func (s *refusingStore) Append(ctx context.Context, durable bool, build func(audit.Head) ([]audit.Record, error)) error {
	if !s.refuseOpening.Load() {
		return s.Store.Append(ctx, durable, build)
	}
	var refused bool
	err := s.Store.Append(ctx, durable, func(h audit.Head) ([]audit.Record, error) {
		recs, err := build(h)
		for i := range recs {
			if !recs[i].Terminal() {
				refused = true
				return nil, errors.New("refused")
			}
		}
		return recs, err
	})
	if refused {
		return fmt.Errorf("%w: full", audit.ErrUnavailable)
	}
	return err
}

// TestAStalePingDoesNotUndoAFailure: a ping that began before an append
// failed, and answers after it, does not make the log healthy: its answer
// is older than the failure. The next ping's answer does.
func TestAStalePingDoesNotUndoAFailure(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	s := &heldPingStore{Store: memstore.Open(st, ""), pings: make(chan chan error), done: make(chan struct{})}
	changes := make(chan error, 10)
	lg := newLog(t, s, audit.WithPingInterval(5*time.Millisecond), audit.WithHealthFunc(func(err error) { changes <- err }))
	// Runs before the log's Close (cleanups run last first): ends the
	// pings that Close waits for, whatever the test's outcome.
	t.Cleanup(func() { close(s.done) })
	ctx := context.Background()
	_, err := lg.Append(ctx, ev(audit.PlanReceived, "a"))
	require.NoError(t, err)
	first := <-s.pings // a ping is under way
	st.Break(memstore.ErrBroken, false)
	_, err = lg.Append(ctx, ev(audit.PlanReceived, "b"))
	require.ErrorIs(t, err, audit.ErrUnavailable)
	require.Error(t, <-changes)
	st.Heal()
	first <- nil        // the old ping says healthy
	second := <-s.pings // the next ping has begun: the old answer was applied
	require.Error(t, lg.Err(), "the stale ping's answer did not undo the failure")
	second <- nil
	require.NoError(t, <-changes, "a ping that began after the failure does")
	require.NoError(t, lg.Err())
}

// heldPingStore hands every ping to the test, which answers it, until
// done is closed.
type heldPingStore struct {
	audit.Store
	pings chan chan error
	done  chan struct{}
}

func (s *heldPingStore) Ping(context.Context) error {
	answer := make(chan error, 1)
	select {
	case s.pings <- answer:
	case <-s.done:
		return nil
	}
	select {
	case err := <-answer:
		return err
	case <-s.done:
		return nil
	}
}

// TestNewClosesExecutionsOfAStoppedProcess: the executions a crashed
// process left open are closed as interrupted before New returns, in log
// order, and Recovered names them.
func TestNewClosesExecutionsOfAStoppedProcess(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	lg, err := audit.New(memstore.Open(st, "replica"))
	require.NoError(t, err)
	ctx := context.Background()
	for _, e := range []audit.Event{ev(audit.PlanReceived, "a"), ev(audit.PlanReceived, "b"), ev(audit.ExecutionStarted, "b"), ev(audit.ExecutionCompleted, "a")} {
		_, err := lg.Append(ctx, e)
		require.NoError(t, err)
	}
	st.Crash()
	lg.Close()

	lg = newLog(t, memstore.Open(st, "replica"))
	require.Equal(t, []string{"b"}, lg.Recovered())
	got := listAll(t, lg, audit.Filter{ExecutionID: "b"}, 10)
	require.Len(t, got, 3)
	require.Equal(t, audit.ExecutionFailed, got[2].Type)
	require.Equal(t, audit.PhaseInterrupted, got[2].Details["phase"])
	require.Equal(t, audit.ExecutionStarted.String(), got[2].Details["last_event_type"])
}

// TestSweepsCloseAnotherReplicasExecutions: a replica that stopped leaves
// an execution open; another replica's periodic sweep closes it once its
// OpenUntil has passed.
func TestSweepsCloseAnotherReplicasExecutions(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	gone, err := audit.New(memstore.Open(st, "gone"), audit.WithOpenFor(50*time.Millisecond))
	require.NoError(t, err)
	_, err = gone.Append(context.Background(), ev(audit.ExecutionStarted, "orphan"))
	require.NoError(t, err)
	st.Crash() // the replica is gone, its process never closes the log
	lg := newLog(t, memstore.Open(st, "survivor"), audit.WithPingInterval(10*time.Millisecond), audit.WithSweepInterval(10*time.Millisecond))
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := listAll(t, lg, audit.Filter{ExecutionID: "orphan"}, 10)
		if len(got) == 2 {
			require.Equal(t, audit.ExecutionFailed, got[1].Type)
			return
		}
		require.True(t, time.Now().Before(deadline), "the sweep did not close the orphan")
		time.Sleep(10 * time.Millisecond) // waits for the sweep's clock, which no event announces
	}
}

// TestPageTokens: tokens continue a listing exactly, on any store of the
// same log (a restart, a replica), and are refused for other filters,
// other logs, or altered.
func TestPageTokens(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	lg := newLog(t, memstore.Open(st, "a"))
	ctx := context.Background()
	for i := range 9 {
		user := "alice"
		if i%3 == 0 {
			user = "bob"
		}
		e := ev(audit.PlanReceived, fmt.Sprint("e", i))
		e.UserID = user
		_, err := lg.Append(ctx, e)
		require.NoError(t, err)
	}
	all := listAll(t, lg, audit.Filter{}, 100)
	require.Len(t, all, 9)
	require.Equal(t, all, listAll(t, lg, audit.Filter{}, 2), "pages of 2 make up the whole log")

	bob := audit.Filter{UserID: "bob"}
	page, token, err := lg.List(ctx, bob, 1, "")
	require.NoError(t, err)
	require.Len(t, page, 1)
	require.NotEmpty(t, token)

	replica := newLog(t, memstore.Open(st, "b"))
	rest, _, err := replica.List(ctx, bob, 10, token)
	require.NoError(t, err, "another process of the same store honours the token")
	require.Len(t, rest, 2)

	otherLog := newLog(t, memstore.Open(memstore.NewStorage(), "a"))
	altered := []byte(token)
	altered[len(altered)/2] ^= 1
	tests := []struct {
		name  string
		lg    *audit.Log
		f     audit.Filter
		token string
	}{
		{"other filter", lg, audit.Filter{UserID: "alice"}, token},
		{"no filter", lg, audit.Filter{}, token},
		{"added filter", lg, audit.Filter{UserID: "bob", Type: audit.PlanReceived}, token},
		{"another log", otherLog, bob, token},
		{"altered", lg, bob, string(altered)},
		{"truncated", lg, bob, token[:len(token)-2]},
		{"garbage", lg, bob, "not a token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := tt.lg.List(ctx, tt.f, 10, tt.token)
			require.ErrorIs(t, err, audit.ErrInvalidPageToken)
		})
	}
}

// TestListChecksItsRequest: page sizes and types out of range are the
// caller's mistake.
func TestListChecksItsRequest(t *testing.T) {
	t.Parallel()
	lg := newLog(t, memstore.Open(memstore.NewStorage(), ""))
	for _, tt := range []struct {
		name     string
		f        audit.Filter
		pageSize int
	}{
		{"negative page size", audit.Filter{}, -1},
		{"page size too large", audit.Filter{}, audit.MaxPageSize + 1},
		{"undefined type", audit.Filter{Type: 99}, 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := lg.List(context.Background(), tt.f, tt.pageSize, "")
			require.ErrorIs(t, err, audit.ErrInvalidQuery)
		})
	}
}

// TestListScanBudget: WithMaxScanned makes a page whose matches are rare
// end early, with a token that continues the listing.
func TestListScanBudget(t *testing.T) {
	t.Parallel()
	lg := newLog(t, memstore.Open(memstore.NewStorage(), ""), audit.WithMaxScanned(10))
	ctx := context.Background()
	for i := range 50 {
		e := ev(audit.PlanReceived, fmt.Sprint("e", i))
		if i == 45 {
			e.UserID = "rare"
		}
		_, err := lg.Append(ctx, e)
		require.NoError(t, err)
	}
	page, token, err := lg.List(ctx, audit.Filter{UserID: "rare"}, 100, "")
	require.NoError(t, err)
	require.Empty(t, page, "nothing within the first ten records")
	require.NotEmpty(t, token, "but a token to go on")
	got := listAll(t, lg, audit.Filter{UserID: "rare"}, 100)
	require.Len(t, got, 1)
	require.Equal(t, "e45", got[0].ExecutionID)
}

// TestCloseIsIdempotentAndFinal: Close stores what was queued, closes the
// store, and every later call fails with ErrClosed.
func TestCloseIsIdempotentAndFinal(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	lg, err := audit.New(memstore.Open(st, ""))
	require.NoError(t, err)
	require.NoError(t, lg.AppendUnsynced(context.Background(), ev(audit.PlanReceived, "e")))
	require.NoError(t, lg.Close())
	require.NoError(t, lg.Close())
	require.Len(t, st.Records(), 1, "what was queued was stored at Close")
	_, err = lg.Append(context.Background(), ev(audit.ExecutionStarted, "e"))
	require.ErrorIs(t, err, audit.ErrClosed)
	_, _, err = lg.List(context.Background(), audit.Filter{}, 10, "")
	require.ErrorIs(t, err, audit.ErrClosed)
}

// TestLateTerminalEventsAreWrittenFirstWhenTheStoreIsBack: the terminal
// event of an execution that ended during an outage is kept, and written
// (with recorded_late) when a ping finds the store healthy again, before
// the log takes a new execution; an execution a replica's sweep closed
// meanwhile is not closed twice.
func TestLateTerminalEventsAreWrittenFirstWhenTheStoreIsBack(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	changes := make(chan error, 10)
	lg := newLog(t, memstore.Open(st, "owner"), audit.WithPingInterval(10*time.Millisecond),
		audit.WithHealthFunc(func(err error) { changes <- err }))
	ctx := context.Background()
	for _, id := range []string{"running", "swept"} {
		_, err := lg.Append(ctx, ev(audit.ExecutionStarted, id))
		require.NoError(t, err)
	}
	st.Break(memstore.ErrBroken, false)
	for _, id := range []string{"running", "swept"} {
		done := ev(audit.ExecutionCompleted, id)
		_, err := lg.Append(ctx, done)
		require.ErrorIs(t, err, audit.ErrUnavailable)
		done.Details = audit.Details{"caller_told": "OUTCOME_UNKNOWN"}
		lg.AppendLater(done)
	}
	require.Error(t, <-changes)
	// A replica closes "swept" meanwhile, as its sweep would.
	other := memstore.Open(st, "other")
	t.Cleanup(func() { other.Close() })
	st.Heal()
	require.NoError(t, other.Append(ctx, true, func(h audit.Head) ([]audit.Record, error) {
		return audit.RenderRecords(h, time.Now(), []audit.Event{ev(audit.ExecutionFailed, "swept")})
	}))
	require.NoError(t, <-changes, "healthy again")
	_, err := lg.Append(ctx, ev(audit.PlanReceived, "new"))
	require.NoError(t, err)

	got := listAll(t, lg, audit.Filter{}, 100)
	var types []string
	for _, e := range got {
		types = append(types, e.ExecutionID+" "+e.Type.String())
	}
	require.Equal(t, []string{
		"running AUDIT_EVENT_TYPE_EXECUTION_STARTED",
		"swept AUDIT_EVENT_TYPE_EXECUTION_STARTED",
		"swept AUDIT_EVENT_TYPE_EXECUTION_FAILED",
		"running AUDIT_EVENT_TYPE_EXECUTION_COMPLETED",
		"new AUDIT_EVENT_TYPE_PLAN_RECEIVED",
	}, types, "the late event first, once; nothing for the execution closed elsewhere")
	late := got[3]
	require.Equal(t, true, late.Details["recorded_late"])
	require.Equal(t, "OUTCOME_UNKNOWN", late.Details["caller_told"])
}

// TestLateEventsAreBounded: past MaxLateEvents, an execution is left to
// the sweep rather than kept in memory.
func TestLateEventsAreBounded(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	lg := newLog(t, memstore.Open(memstore.NewStorage(), ""), audit.WithRegisterer(reg))
	for i := range audit.MaxLateEvents + 5 {
		lg.AppendLater(ev(audit.ExecutionCompleted, fmt.Sprint("e", i)))
	}
	require.Equal(t, float64(audit.MaxLateEvents), gauge(t, reg, "stage4_audit_late_events"))
	require.Equal(t, float64(5), counter(t, reg, "stage4_audit_late_events_dropped_total", "reason", "full"))
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return metricValue(t, reg, name, "", "")
}

func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	return metricValue(t, reg, name, label, value)
}

func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if label != "" {
				match := false
				for _, l := range m.GetLabel() {
					match = match || (l.GetName() == label && l.GetValue() == value)
				}
				if !match {
					continue
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
