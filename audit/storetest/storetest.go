// Package storetest is the conformance suite of audit.Store: every store
// (the log directory, PostgreSQL, memory) passes the same tests, one or
// more for each rule written on audit.Store, so that the code above the
// seam need not know which store it has. A store's own tests call Run
// with a Harness: how to open stores on fresh storage, and, where the
// store can be made to suffer them, the faults the rules speak of.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
)

// Harness is how the suite reaches one test's storage. Open is required;
// a fault left nil cannot be made for this store, and the tests that need
// it are skipped with a message.
type Harness struct {
	// Open opens a store on this test's storage. The suite calls it
	// again, after closing the store it returned, to stand for the
	// process restarting on the same data; a store shared by replicas
	// opens under the same replica name each time.
	Open func(t *testing.T) audit.Store
	// OpenReplica opens another replica, under name, on the same storage,
	// for stores that several processes share; nil for a store of one
	// process.
	OpenReplica func(t *testing.T, name string) audit.Store
	// Break makes the storage refuse appends (a failed disk, an
	// unreachable database) until Heal.
	Break func(t *testing.T)
	// Hang makes the storage stop answering (a hung fsync, a network
	// partition) until Heal.
	Hang func(t *testing.T)
	// Heal ends Break and Hang.
	Heal func(t *testing.T)
	// Recovers says whether a store whose storage healed takes appends
	// again (a database) or stays failed until a restart (a local log,
	// after a failed or abandoned fsync).
	Recovers bool
	// LoseAnswer makes the outcome of the next append unknown to the
	// store (a connection lost during COMMIT).
	LoseAnswer func(t *testing.T)
	// Grace is how long past an execution's OpenUntil another replica
	// waits before it may close it (shared stores).
	Grace time.Duration
	// RollBack changes the storage under a running store as an operator
	// with write access could: removes the records after to (the head
	// after one of them) and makes to the head.
	RollBack func(t *testing.T, to audit.Head)
	// BreakHead changes the stored head so that it no longer names the
	// last record (its hash set to garbage).
	BreakHead func(t *testing.T)
	// DeleteRecord removes the record of sequence seq from the storage,
	// leaving a gap.
	DeleteRecord func(t *testing.T, seq uint64)
}

// Run runs the conformance suite. newHarness makes fresh, empty storage
// for one test and returns its Harness; it removes the storage with
// t.Cleanup. Tests run in parallel, each on storage of its own. The suite
// closes the stores it opens.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	tests := []struct {
		name string
		run  func(t *testing.T, h Harness)
	}{
		// Rule 1: appends build on the true head.
		{"EmptyLog", testEmptyLog},
		{"AppendExtendsHead", testAppendExtendsHead},
		{"BuildErrorStoresNothing", testBuildErrorStoresNothing},
		// Rule 2: durability.
		{"DurableAndNonDurableSurviveRestart", testSurviveRestart},
		// Rule 3: honest failures.
		{"UnavailableStoresNothing", testUnavailableStoresNothing},
		{"OutcomeUnknownThenTrueHead", testOutcomeUnknown},
		// Rule 4: listings.
		{"ListReturnsOnlyDurable", testListOnlyDurable},
		{"ListFilters", testListFilters},
		{"ListPaging", testListPaging},
		{"CursorSurvivesRestart", testCursorSurvivesRestart},
		{"ListConcurrentWithAppend", testListConcurrentWithAppend},
		{"ListScanBudget", testListScanBudget},
		// Rule 5: ctx bounds every call.
		{"ContextBoundsEveryCall", testContextBounds},
		{"HungStorageIsBounded", testHungStorage},
		// Rule 6: ping.
		{"PingReportsFailure", testPingReportsFailure},
		// Rule 7: interrupted executions.
		{"InterruptedAfterRestart", testInterruptedAfterRestart},
		{"InterruptedClaimEndsWithClaimer", testInterruptedClaimEndsWithClaimer},
		{"OpenUntilBoundsOtherReplicas", testOpenUntil},
		{"ClaimIsExclusive", testClaim},
		// Rule 8: the tree.
		{"TreeHashesAndEdgeSurviveRestart", testTreeSurvivesRestart},
		{"ReadHashesBeyondTheTreeFails", testReadHashesBeyondTree},
		{"DurableHeadFollowsDurableAppends", testDurableHead},
		// Rule 9: checkpoints.
		{"CheckpointIsKept", testCheckpointIsKept},
		{"CosignedIsKeptApart", testCosignedIsKeptApart},
		// Rule 10: the key.
		{"FingerprintKeyIsKept", testFingerprintKeyIsKept},
		// Rule 11: Close.
		{"CloseIsIdempotent", testCloseIsIdempotent},
		{"CallsAfterCloseFail", testCallsAfterClose},
		// Rule 12: one signing identity.
		{"VerifierKeysArePinned", testVerifierKeysArePinned},
		// Rule 13: never build on a changed head.
		{"RolledBackHeadIsRefused", testRolledBackHeadIsRefused},
		{"BrokenHeadIsRefused", testBrokenHeadIsRefused},
		// Rule 14: listings never skip a missing record.
		{"ListNeverSkipsADeletedRecord", testListNeverSkipsADeletedRecord},
	}
	// Rule 12: the keys of idempotent executions (requests.go).
	tests = append(tests, requestTests...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, newHarness(t))
		})
	}
}

// openStore opens a store and closes it at the end of the test unless the
// test closed it first (a restart).
func openStore(t *testing.T, h Harness) audit.Store {
	t.Helper()
	s := h.Open(t)
	t.Cleanup(func() { s.Close() })
	return s
}

// restart closes s and opens the store again on the same data.
func restart(t *testing.T, s audit.Store, h Harness) audit.Store {
	t.Helper()
	require.NoError(t, s.Close())
	return openStore(t, h)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// need skips a test whose fault the store cannot be made to suffer.
func need(t *testing.T, fault string, ok bool) {
	t.Helper()
	if !ok {
		t.Skipf("this store's harness cannot make %s", fault)
	}
}

// event makes an event with details that exercise the encoder: escaping,
// non-ASCII text, a number, a list, an object.
func event(typ audit.EventType, exec, plan, user string) audit.Event {
	return audit.Event{
		Type:        typ,
		ExecutionID: exec,
		PlanID:      plan,
		UserID:      user,
		Details: audit.Details{
			"note":  "storetest \"quoted\" \u00e9",
			"n":     1.5,
			"list":  []any{"a", 2.0, nil, true},
			"inner": map[string]any{"k": "v"},
		},
	}
}

const (
	received  = audit.PlanReceived
	started   = audit.ExecutionStarted
	completed = audit.ExecutionCompleted
	failed    = audit.ExecutionFailed
)

// render is the build function of an append of evs; openUntil, when set,
// is stamped on the records that open or continue an execution, as the
// log does. out, when not nil, receives the records.
func render(evs []audit.Event, openUntil time.Time, out *[]audit.Record) func(audit.Head) ([]audit.Record, error) {
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

// appendEvents appends evs as one batch and returns the records stored.
func appendEvents(t *testing.T, s audit.Store, durable bool, evs ...audit.Event) []audit.Record {
	t.Helper()
	var recs []audit.Record
	require.NoError(t, s.Append(ctx(t), durable, render(evs, time.Time{}, &recs)))
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

// listAll follows the cursors of q to the end.
func listAll(t *testing.T, s audit.Store, q audit.Query) []audit.Event {
	t.Helper()
	if q.Limit == 0 {
		q.Limit = 1000
	}
	var all []audit.Event
	for range 100000 {
		page, err := s.List(ctx(t), q)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Events), q.Limit)
		all = append(all, page.Events...)
		if page.Done() {
			return all
		}
		require.Greater(t, page.Next.Sequence, q.From.Sequence, "a cursor moves forward")
		q.From = page.Next
	}
	t.Fatal("listing did not end")
	return nil
}

// decoded returns the events that recs encode, checking them as one chain
// from sequence 1 on the way.
func decoded(t *testing.T, recs []audit.Record) []audit.Event {
	t.Helper()
	var c audit.ChainChecker
	evs := make([]audit.Event, len(recs))
	for i := range recs {
		ev, err := c.Check(recs[i].Line)
		require.NoError(t, err)
		evs[i] = ev
	}
	return evs
}

func requireEvents(t *testing.T, want, got []audit.Event) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.Truef(t, want[i].Time.Equal(got[i].Time), "event %d: time %v, want %v", i, got[i].Time, want[i].Time)
		w, g := want[i], got[i]
		w.Time, g.Time = time.Time{}, time.Time{}
		require.Equal(t, w, g, "event %d", i)
	}
}

func testEmptyLog(t *testing.T, h Harness) {
	s := openStore(t, h)
	require.Equal(t, audit.Head{}, headOf(t, s))
	page, err := s.List(ctx(t), audit.Query{Limit: 10})
	require.NoError(t, err)
	require.Empty(t, page.Events)
	require.True(t, page.Done())
	open2, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, open2)
}

func testAppendExtendsHead(t *testing.T, h Harness) {
	s := openStore(t, h)
	var all []audit.Record
	for i, size := range []int{1, 3, 2} {
		head := headOf(t, s)
		require.Equal(t, headAfter(t, all), head, "batch %d", i)
		var evs []audit.Event
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

func testBuildErrorStoresNothing(t *testing.T, h Harness) {
	s := openStore(t, h)
	recs := appendEvents(t, s, true, event(received, "a", "p", "u"), event(failed, "a", "p", "u"))
	errBuild := errors.New("build failed")
	err := s.Append(ctx(t), true, func(h audit.Head) ([]audit.Record, error) {
		return nil, errBuild
	})
	require.ErrorIs(t, err, errBuild)
	require.Equal(t, headAfter(t, recs), headOf(t, s))
	requireEvents(t, decoded(t, recs), listAll(t, s, audit.Query{}))
}

func testSurviveRestart(t *testing.T, h Harness) {
	s := openStore(t, h)
	recs := appendEvents(t, s, false, event(received, "a", "p", "u"))
	recs = append(recs, appendEvents(t, s, true, event(started, "a", "p", "u"))...)
	s = restart(t, s, h)
	requireEvents(t, decoded(t, recs), listAll(t, s, audit.Query{}))
	require.Equal(t, headAfter(t, recs), headOf(t, s))
}

// testUnavailableStoresNothing: an append refused as unavailable stored
// nothing; once the storage heals (and, for a store that does not
// recover on its own, after a restart) the next append extends the head
// as it was.
func testUnavailableStoresNothing(t *testing.T, h Harness) {
	need(t, "broken storage", h.Break != nil)
	s := openStore(t, h)
	recs := appendEvents(t, s, true, event(received, "a", "p", "u"))
	h.Break(t)
	err := s.Append(ctx(t), true, render([]audit.Event{event(started, "a", "p", "u")}, time.Time{}, nil))
	require.ErrorIs(t, err, audit.ErrUnavailable)
	h.Heal(t)
	if !h.Recovers {
		s = restart(t, s, h)
	}
	require.Equal(t, headAfter(t, recs), headOf(t, s), "nothing of the refused batch was stored")
	recs = append(recs, appendEvents(t, s, true, event(completed, "a", "p", "u"))...)
	requireEvents(t, decoded(t, recs), listAll(t, s, audit.Query{}))
}

// testOutcomeUnknown: after an append whose outcome the store could not
// learn, the next append builds on whatever is really stored.
func testOutcomeUnknown(t *testing.T, h Harness) {
	need(t, "a lost answer", h.LoseAnswer != nil)
	s := openStore(t, h)
	recs := appendEvents(t, s, true, event(received, "a", "p", "u"))
	h.LoseAnswer(t)
	var lost []audit.Record
	err := s.Append(ctx(t), true, render([]audit.Event{event(started, "a", "p", "u")}, time.Time{}, &lost))
	require.ErrorIs(t, err, audit.ErrOutcomeUnknown)
	if h.Heal != nil {
		h.Heal(t)
	}
	if !h.Recovers {
		s = restart(t, s, h)
	}
	head := headOf(t, s)
	switch head.Sequence {
	case recs[len(recs)-1].Sequence:
	case lost[0].Sequence:
		recs = append(recs, lost...)
	default:
		t.Fatalf("after an unknown outcome the head is %d, want %d or %d", head.Sequence, recs[len(recs)-1].Sequence, lost[0].Sequence)
	}
	require.Equal(t, headAfter(t, recs), head)
	recs = append(recs, appendEvents(t, s, true, event(completed, "a", "p", "u"))...)
	requireEvents(t, decoded(t, recs), listAll(t, s, audit.Query{}))
}

// testListOnlyDurable: a record appended without durable is not listed
// until a durable append follows it, so that a reader never sees a record
// that a crash could take back.
func testListOnlyDurable(t *testing.T, h Harness) {
	s := openStore(t, h)
	recs := appendEvents(t, s, true, event(received, "a", "p", "u"))
	volatile := appendEvents(t, s, false, event(received, "b", "p", "u"))
	requireEvents(t, decoded(t, recs), listAll(t, s, audit.Query{}))
	got := listAll(t, s, audit.Query{Filter: audit.Filter{ExecutionID: "b"}})
	require.Empty(t, got, "a filtered listing does not show it either")
	durable, err := s.DurableHead(ctx(t))
	require.NoError(t, err)
	require.LessOrEqual(t, durable.Sequence, volatile[0].Sequence)
	recs = append(recs, volatile...)
	recs = append(recs, appendEvents(t, s, true, event(started, "b", "p", "u"))...)
	requireEvents(t, decoded(t, recs), listAll(t, s, audit.Query{}))
}

// fixture appends a small log with every filter field varied and returns
// its events.
func fixture(t *testing.T, s audit.Store) []audit.Event {
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

func testListFilters(t *testing.T, h Harness) {
	s := openStore(t, h)
	evs := fixture(t, s)
	tests := []struct {
		name string
		f    audit.Filter
		want []int // indexes into evs
	}{
		{"all", audit.Filter{}, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{"execution", audit.Filter{ExecutionID: "e3"}, []int{4, 6, 7}},
		{"plan", audit.Filter{PlanID: "plan-b"}, []int{1, 3}},
		{"user", audit.Filter{UserID: "alice"}, []int{0, 2, 5}},
		{"type", audit.Filter{Type: failed}, []int{3, 7}},
		{"all filters", audit.Filter{ExecutionID: "e3", PlanID: "plan-a", UserID: "bob", Type: started}, []int{6}},
		{"user and plan", audit.Filter{UserID: "bob", PlanID: "plan-a"}, []int{4, 6, 7}},
		{"unknown execution", audit.Filter{ExecutionID: "no-such-execution"}, nil},
		{"filters that exclude each other", audit.Filter{ExecutionID: "e1", UserID: "bob"}, nil},
		{"value with a quote", audit.Filter{UserID: `bob"`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want []audit.Event
			for _, i := range tt.want {
				want = append(want, evs[i])
			}
			requireEvents(t, want, listAll(t, s, audit.Query{Filter: tt.f}))
		})
	}
}

func testListPaging(t *testing.T, h Harness) {
	s := openStore(t, h)
	evs := fixture(t, s)
	for _, size := range []int{1, 2, 3, 8, 9} {
		t.Run(fmt.Sprint("page size ", size), func(t *testing.T) {
			requireEvents(t, evs, listAll(t, s, audit.Query{Limit: size}))
		})
	}
	t.Run("filtered", func(t *testing.T) {
		want := []audit.Event{evs[4], evs[6], evs[7]}
		requireEvents(t, want, listAll(t, s, audit.Query{Filter: audit.Filter{ExecutionID: "e3"}, Limit: 1}))
	})
	t.Run("from a cursor", func(t *testing.T) {
		requireEvents(t, evs[5:], listAll(t, s, audit.Query{From: audit.Cursor{Sequence: 6}, Limit: 2}))
	})
}

func testCursorSurvivesRestart(t *testing.T, h Harness) {
	s := openStore(t, h)
	evs := fixture(t, s)
	page, err := s.List(ctx(t), audit.Query{Limit: 3})
	require.NoError(t, err)
	require.False(t, page.Done())
	s = restart(t, s, h)
	requireEvents(t, evs[3:], listAll(t, s, audit.Query{Limit: 3, From: page.Next}))
}

// testListConcurrentWithAppend: listings while batches are appended see
// a gapless prefix of the log made of whole batches, never a part.
func testListConcurrentWithAppend(t *testing.T, h Harness) {
	s := openStore(t, h)
	const batches, perBatch = 30, 3
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for i := range batches {
			var evs []audit.Event
			for j := range perBatch {
				evs = append(evs, event(received, fmt.Sprintf("c-%d-%d", i, j), "p", "u"))
			}
			if err := s.Append(ctx(t), true, render(evs, time.Time{}, nil)); err != nil {
				t.Errorf("append: %v", err)
				return
			}
		}
	})
	for listing := true; listing; {
		select {
		case <-done:
			listing = false
		default:
		}
		got := listAll(t, s, audit.Query{Limit: 7})
		require.Zero(t, len(got)%perBatch, "a listing holds whole batches")
		for i, ev := range got {
			require.Equal(t, uint64(i+1), ev.Sequence, "gapless from 1")
		}
	}
	wg.Wait()
	require.Len(t, listAll(t, s, audit.Query{}), batches*perBatch)
}

// testListScanBudget: with MaxScanned, a page whose matches are far apart
// ends early with a cursor, and following the cursors still lists every
// match exactly once.
func testListScanBudget(t *testing.T, h Harness) {
	s := openStore(t, h)
	var recs []audit.Record
	for i := range 10 {
		var evs []audit.Event
		for j := range 20 {
			user := "filler"
			if j == 19 {
				user = "rare"
			}
			evs = append(evs, event(received, fmt.Sprintf("b-%d-%d", i, j), "p", user))
		}
		recs = append(recs, appendEvents(t, s, true, evs...)...)
	}
	all := decoded(t, recs)
	var want []audit.Event
	for _, ev := range all {
		if ev.UserID == "rare" {
			want = append(want, ev)
		}
	}
	q := audit.Query{Filter: audit.Filter{UserID: "rare"}, Limit: 100, MaxScanned: 5}
	page, err := s.List(ctx(t), q)
	require.NoError(t, err)
	require.Less(t, len(page.Events), len(want), "the budget ended the first page early")
	require.False(t, page.Done())
	requireEvents(t, want, listAll(t, s, q))
	requireEvents(t, all, listAll(t, s, audit.Query{Limit: 100, MaxScanned: 7}))
}

// testContextBounds: a call whose ctx has ended returns at once, with an
// error wrapping the ctx's or with its result; a refused append stored
// nothing.
func testContextBounds(t *testing.T, h Harness) {
	s := openStore(t, h)
	recs := appendEvents(t, s, true, event(received, "a", "p", "u"))
	c, cancel := context.WithCancel(context.Background())
	cancel()
	calls := map[string]func() error{
		"Append": func() error {
			return s.Append(c, true, render([]audit.Event{event(started, "a", "p", "u")}, time.Time{}, nil))
		},
		"List":           func() error { _, err := s.List(c, audit.Query{Limit: 10}); return err },
		"Ping":           func() error { return s.Ping(c) },
		"Interrupted":    func() error { _, err := s.Interrupted(c); return err },
		"ReadHashes":     func() error { _, err := s.ReadHashes(c, []int64{0}); return err },
		"DurableHead":    func() error { _, err := s.DurableHead(c); return err },
		"LoadCheckpoint": func() error { _, err := s.LoadCheckpoint(c); return errIgnoring(err, audit.ErrNoCheckpoint) },
	}
	appended := false
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			returned := make(chan error, 1)
			go func() { returned <- call() }()
			select {
			case err := <-returned:
				if err != nil {
					require.ErrorIs(t, err, context.Canceled, "a call that stops for ctx says so")
				} else if name == "Append" {
					appended = true
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s with a cancelled ctx has not returned after 10 s", name)
			}
		})
	}
	head := headOf(t, s)
	if !appended {
		require.Equal(t, headAfter(t, recs), head, "the refused append stored nothing")
	}
}

func errIgnoring(err, ignored error) error {
	if errors.Is(err, ignored) {
		return nil
	}
	return err
}

// testHungStorage: while the storage does not answer, every call returns
// by its ctx's deadline (plus a margin for the store to give up), with an
// error; Ping says unavailable.
func testHungStorage(t *testing.T, h Harness) {
	need(t, "hung storage", h.Hang != nil)
	s := openStore(t, h)
	appendEvents(t, s, true, event(received, "a", "p", "u"))
	h.Hang(t)
	healed := false
	t.Cleanup(func() {
		if !healed {
			h.Heal(t)
		}
	})
	const bound = 500 * time.Millisecond
	calls := map[string]func(context.Context) error{
		"Append": func(c context.Context) error {
			return s.Append(c, true, render([]audit.Event{event(started, "a", "p", "u")}, time.Time{}, nil))
		},
		"Ping": func(c context.Context) error { return s.Ping(c) },
	}
	for _, name := range []string{"Append", "Ping"} {
		t.Run(name, func(t *testing.T) {
			c, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			returned := make(chan error, 1)
			go func() { returned <- calls[name](c) }()
			select {
			case err := <-returned:
				require.Error(t, err, "a call on hung storage cannot succeed")
				if name == "Ping" {
					require.ErrorIs(t, err, audit.ErrUnavailable)
				}
			case <-time.After(bound + 5*time.Second):
				t.Fatalf("%s on hung storage has not returned 5 s after its deadline", name)
			}
		})
	}
	// Once the storage answers again, the store takes appends again
	// (after what the hung append wrote turned out durable, or not, and a
	// local log after a restart if it cannot tell), and the log is one
	// gapless chain.
	h.Heal(t)
	healed = true
	deadline := time.Now().Add(20 * time.Second)
	for s.Ping(ctx(t)) != nil {
		if time.Now().After(deadline) {
			s = restart(t, s, h)
			break
		}
		time.Sleep(20 * time.Millisecond) // the store's own recovery, which no event announces
	}
	appendEvents(t, s, true, event(completed, "a", "p", "u"))
	got := listAll(t, s, audit.Query{})
	for i, ev := range got {
		require.Equal(t, uint64(i+1), ev.Sequence)
	}
	require.Equal(t, completed, got[len(got)-1].Type)
}

// testPingReportsFailure: Ping says unavailable while the storage refuses,
// and once it heals says healthy again if the store recovers, or keeps
// failing (until a restart) if it does not.
func testPingReportsFailure(t *testing.T, h Harness) {
	s := openStore(t, h)
	require.NoError(t, s.Ping(ctx(t)))
	appendEvents(t, s, true, event(received, "a", "p", "u"))
	require.NoError(t, s.Ping(ctx(t)))
	need(t, "broken storage", h.Break != nil)
	h.Break(t)
	// A local store notices at its next write: append as the log would.
	_ = s.Append(ctx(t), true, render([]audit.Event{event(started, "a", "p", "u")}, time.Time{}, nil))
	require.ErrorIs(t, s.Ping(ctx(t)), audit.ErrUnavailable)
	h.Heal(t)
	if h.Recovers {
		require.NoError(t, s.Ping(ctx(t)))
		return
	}
	require.ErrorIs(t, s.Ping(ctx(t)), audit.ErrUnavailable, "a store that failed for good keeps failing")
	s = restart(t, s, h)
	require.NoError(t, s.Ping(ctx(t)))
}

func testInterruptedAfterRestart(t *testing.T, h Harness) {
	s := openStore(t, h)
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

	s = restart(t, s, h)
	got, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []audit.OpenExecution{
		{ExecutionID: "only-received", PlanID: "p1", UserID: "u1", LastType: received, Sequence: 1},
		{ExecutionID: "started", PlanID: "p3", UserID: "u3", LastType: started, Sequence: 3},
	}, got)
	again, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, again, "each open execution is handed out once")

	var closing []audit.Event
	for _, e := range got {
		closing = append(closing, event(failed, e.ExecutionID, e.PlanID, e.UserID))
	}
	appendEvents(t, s, true, closing...)
	s = restart(t, s, h)
	after, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, after, "closed executions are never handed out")
}

// testInterruptedClaimEndsWithClaimer: an execution handed out to a
// process that stopped before closing it is handed out again after the
// next restart; it is still open.
func testInterruptedClaimEndsWithClaimer(t *testing.T, h Harness) {
	s := openStore(t, h)
	appendEvents(t, s, true, event(received, "x", "p", "u"), event(started, "x", "p", "u"))
	s = restart(t, s, h)
	got, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Len(t, got, 1)
	s = restart(t, s, h)
	got, err = s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []audit.OpenExecution{{ExecutionID: "x", PlanID: "p", UserID: "u", LastType: started, Sequence: 1}}, got)
}

// testOpenUntil: another replica never closes an execution while its
// owner runs, and closes it once the owner is gone and its OpenUntil
// (and the store's grace period) has passed; exactly one replica gets it.
func testOpenUntil(t *testing.T, h Harness) {
	need(t, "replicas", h.OpenReplica != nil)
	owner := h.OpenReplica(t, "owner")
	t.Cleanup(func() { owner.Close() })
	other := h.OpenReplica(t, "other")
	t.Cleanup(func() { other.Close() })
	third := h.OpenReplica(t, "third")
	t.Cleanup(func() { third.Close() })
	until := time.Now().Add(300 * time.Millisecond)
	require.NoError(t, owner.Append(ctx(t), true, render([]audit.Event{event(received, "x", "p", "u"), event(started, "x", "p", "u")}, until, nil)))
	got, err := other.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, got, "the owner runs it and its OpenUntil has not passed")
	require.NoError(t, owner.Close())
	got, err = other.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, got, "the owner is gone, but its OpenUntil has not passed")
	deadline := until.Add(h.Grace).Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got, err = other.Interrupted(ctx(t))
		require.NoError(t, err)
		if len(got) > 0 {
			break
		}
		// Polling the store's own clock: OpenUntil and the grace period
		// are times, not events a test can wait on.
		time.Sleep(100 * time.Millisecond)
	}
	require.Equal(t, []audit.OpenExecution{{ExecutionID: "x", PlanID: "p", UserID: "u", LastType: started, Sequence: 1}}, got)
	// The claimer lives on (its heartbeat is its ping, as the log's
	// supervisor sends every second): nobody else gets the execution.
	require.NoError(t, other.Ping(ctx(t)))
	again, err := third.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Empty(t, again, "one replica gets it")
}

// testClaim: a process claims its own open executions to close them late,
// and only those: not a closed one, not one it never stored, not one a
// stopped process left open (Interrupted hands those out), not another
// replica's; and what it claimed, no sweep hands out.
func testClaim(t *testing.T, h Harness) {
	s := openStore(t, h)
	appendEvents(t, s, true, event(received, "inherited", "p", "u"))
	s = restart(t, s, h)
	appendEvents(t, s, true,
		event(received, "open", "p", "u"), event(started, "open", "p", "u"),
		event(received, "closed", "p", "u"), event(failed, "closed", "p", "u"))
	got, err := s.Claim(ctx(t), []string{"open", "closed", "never-stored", "inherited"})
	require.NoError(t, err)
	require.Equal(t, []audit.OpenExecution{{ExecutionID: "open", PlanID: "p", UserID: "u", LastType: started, Sequence: 2}}, got)
	again, err := s.Claim(ctx(t), []string{"open"})
	require.NoError(t, err)
	require.Len(t, again, 1, "a claim may be made again by the same process, to retry the close")
	inherited, err := s.Interrupted(ctx(t))
	require.NoError(t, err)
	require.Equal(t, []string{"inherited"}, executionIDs(inherited), "the sweep hands out what a stopped process left, not what this one claimed")
	appendEvents(t, s, true, event(failed, "open", "p", "u"))
	after, err := s.Claim(ctx(t), []string{"open"})
	require.NoError(t, err)
	require.Empty(t, after, "closed now")

	if h.OpenReplica == nil {
		return
	}
	a := h.OpenReplica(t, "claim-a")
	t.Cleanup(func() { a.Close() })
	b := h.OpenReplica(t, "claim-b")
	t.Cleanup(func() { b.Close() })
	require.NoError(t, a.Append(ctx(t), true, render([]audit.Event{event(started, "a-owns", "p", "u")}, time.Now().Add(-time.Hour), nil)))
	theirs, err := b.Claim(ctx(t), []string{"a-owns"})
	require.NoError(t, err)
	require.Empty(t, theirs, "another replica's execution is not ours to claim")
	mine, err := a.Claim(ctx(t), []string{"a-owns"})
	require.NoError(t, err)
	require.Len(t, mine, 1)
	require.NoError(t, a.Ping(ctx(t)))
	swept, err := b.Interrupted(ctx(t))
	require.NoError(t, err)
	require.NotContains(t, executionIDs(swept), "a-owns", "claimed by a live owner: no sweep takes it")
}

func executionIDs(open []audit.OpenExecution) []string {
	ids := make([]string, len(open))
	for i, e := range open {
		ids[i] = e.ExecutionID
	}
	return ids
}

// testFingerprintKeyIsKept: a store has one secret key of 32 random bytes,
// the same after a restart, so that equal plans keep equal plan_ids.
func testFingerprintKeyIsKept(t *testing.T, h Harness) {
	s := openStore(t, h)
	key, err := s.FingerprintKey(ctx(t))
	require.NoError(t, err)
	require.Len(t, key, 32)
	require.NotEqual(t, make([]byte, 32), key)
	s = restart(t, s, h)
	again, err := s.FingerprintKey(ctx(t))
	require.NoError(t, err)
	require.Equal(t, key, again)
}

func testCloseIsIdempotent(t *testing.T, h Harness) {
	s := h.Open(t)
	appendEvents(t, s, true, event(received, "a", "p", "u"))
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "a second Close is a no-op")
}

func testCallsAfterClose(t *testing.T, h Harness) {
	s := h.Open(t)
	appendEvents(t, s, true, event(received, "a", "p", "u"))
	require.NoError(t, s.Close())
	calls := map[string]func() error{
		"Append": func() error {
			return s.Append(ctx(t), true, render([]audit.Event{event(failed, "a", "p", "u")}, time.Time{}, nil))
		},
		"List":           func() error { _, err := s.List(ctx(t), audit.Query{Limit: 10}); return err },
		"Ping":           func() error { return s.Ping(ctx(t)) },
		"Interrupted":    func() error { _, err := s.Interrupted(ctx(t)); return err },
		"ReadHashes":     func() error { _, err := s.ReadHashes(ctx(t), []int64{0}); return err },
		"DurableHead":    func() error { _, err := s.DurableHead(ctx(t)); return err },
		"SaveCheckpoint": func() error { return s.SaveCheckpoint(ctx(t), 1, []byte("x")) },
		"LoadCheckpoint": func() error { _, err := s.LoadCheckpoint(ctx(t)); return err },
		"FingerprintKey": func() error { _, err := s.FingerprintKey(ctx(t)); return err },
		"SaveCosigned":   func() error { return s.SaveCosigned(ctx(t), 1, []byte("x")) },
		"LoadCosigned":   func() error { _, err := s.LoadCosigned(ctx(t)); return err },
		"VerifierKeys":   func() error { _, err := s.VerifierKeys(ctx(t)); return err },
		"PinVerifierKeys": func() error {
			_, err := s.PinVerifierKeys(ctx(t), nil, []string{"k"})
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			require.ErrorIs(t, call(), audit.ErrClosed)
		})
	}
}
