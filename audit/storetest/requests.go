package storetest

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
)

// requestTests are the tests of the rules on audit.RequestStore (rule 12
// of audit.Store).
var requestTests = []struct {
	name string
	run  func(t *testing.T, h Harness)
}{
	{"ClaimOnce", testClaimOnce},
	{"ConcurrentClaimsOneWins", testConcurrentClaims},
	{"TerminalRecordSettlesItsKey", testTerminalSettles},
	{"SettlesOnlyItsOwnClaim", testSettlesOnlyItsOwn},
	{"ClaimsSurviveRestart", testClaimsSurviveRestart},
	{"ExpiredKeysAreForgotten", testExpiredKeys},
	{"StaleClaimIsTakenOver", testStaleClaim},
	{"RequestCallsAfterClose", testRequestCallsAfterClose},
	{"RequestCallsBoundedByContext", testRequestCallsBounded},
	{"RequestCallsOnBrokenStorage", testRequestCallsBroken},
}

// claimFor is a claim of key k by execution exec for plan, running for an
// hour.
func claimFor(k audit.RequestKey, exec, plan string) audit.Request {
	now := time.Now()
	return audit.Request{Key: k, PlanID: plan, ExecutionID: exec, Claimed: now, OpenUntil: now.Add(time.Hour)}
}

// claim claims req with no expiry and returns what the store holds.
func claim(t *testing.T, s audit.Store, req audit.Request) (audit.Request, bool) {
	t.Helper()
	held, claimed, err := s.ClaimRequest(ctx(t), req, time.Time{})
	require.NoError(t, err)
	return held, claimed
}

// requireHeld checks the stored Request against want, times to the
// microsecond (PostgreSQL's precision).
func requireHeld(t *testing.T, want, got audit.Request) {
	t.Helper()
	require.Equal(t, want.Key, got.Key)
	require.Equal(t, want.PlanID, got.PlanID)
	require.Equal(t, want.ExecutionID, got.ExecutionID)
	require.Equal(t, want.State, got.State)
	require.True(t, bytes.Equal(want.Answer, got.Answer), "answer %q, want %q", got.Answer, want.Answer)
	require.WithinDuration(t, want.Claimed, got.Claimed, time.Millisecond)
}

// execute appends an execution's three events, the last with outcome.
func execute(t *testing.T, s audit.Store, exec, plan string, outcome *audit.RequestOutcome) {
	t.Helper()
	end := event(completed, exec, plan, "u")
	if outcome != nil && outcome.Answer == nil {
		end.Type = failed
	}
	end.Request = outcome
	appendEvents(t, s, false, event(received, exec, plan, "u"))
	appendEvents(t, s, true, event(started, exec, plan, "u"))
	appendEvents(t, s, true, end)
}

// testClaimOnce: a key is claimed once; a second claim gets the first
// one's Request; other callers and other ids are other keys.
func testClaimOnce(t *testing.T, h Harness) {
	s := openStore(t, h)
	k := audit.RequestKey{Caller: "user:alice", ID: "r1"}
	first := claimFor(k, "e1", "p1")
	got, claimed := claim(t, s, first)
	require.True(t, claimed)
	first.State = audit.RequestRunning
	requireHeld(t, first, got)

	got, claimed = claim(t, s, claimFor(k, "e2", "p2"))
	require.False(t, claimed, "the key is held")
	requireHeld(t, first, got)

	for _, other := range []audit.RequestKey{
		{Caller: "user:bob", ID: "r1"},
		{Caller: "cert:alice", ID: "r1"},
		{Caller: "user:alice", ID: "r2"},
		{Caller: "user:alice", ID: "R1"},
	} {
		_, claimed = claim(t, s, claimFor(other, "e-"+other.Caller+other.ID, "p1"))
		require.True(t, claimed, "key %v is not %v", other, k)
	}
}

// testConcurrentClaims: of many concurrent claims of one key, on every
// replica where the store has them, exactly one wins and every other
// gets the winner's Request.
func testConcurrentClaims(t *testing.T, h Harness) {
	stores := []audit.Store{openStore(t, h)}
	if h.OpenReplica != nil {
		for _, name := range []string{"replica-a", "replica-b"} {
			r := h.OpenReplica(t, name)
			t.Cleanup(func() { r.Close() })
			stores = append(stores, r)
		}
	}
	for round := range 5 {
		k := audit.RequestKey{Caller: "user:alice", ID: fmt.Sprint("race-", round)}
		const perStore = 8
		type result struct {
			held    audit.Request
			claimed bool
			err     error
		}
		results := make(chan result, perStore*len(stores))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, s := range stores {
			for j := range perStore {
				wg.Go(func() {
					<-start
					held, claimed, err := s.ClaimRequest(ctx(t), claimFor(k, fmt.Sprintf("e-%d-%d", i, j), "p"), time.Time{})
					results <- result{held, claimed, err}
				})
			}
		}
		close(start)
		wg.Wait()
		close(results)
		var winners []string
		var held []string
		for r := range results {
			require.NoError(t, r.err)
			if r.claimed {
				winners = append(winners, r.held.ExecutionID)
			}
			held = append(held, r.held.ExecutionID)
		}
		require.Len(t, winners, 1, "exactly one claim wins")
		for _, id := range held {
			require.Equal(t, winners[0], id, "every claim sees the winner")
		}
	}
}

// testTerminalSettles: the terminal record of the claiming execution
// settles its key in the same batch: done with its answer (also a large
// one), unknown, or forgotten.
func testTerminalSettles(t *testing.T, h Harness) {
	s := openStore(t, h)
	large := bytes.Repeat([]byte{0, 1, 2, 0xff, '\n'}, 1<<18) // 1.25 MiB, any bytes
	tests := []struct {
		name    string
		outcome *audit.RequestOutcome
		state   audit.RequestState // 0: forgotten
		answer  []byte
	}{
		{name: "done", outcome: &audit.RequestOutcome{Answer: []byte("the answer")}, state: audit.RequestDone, answer: []byte("the answer")},
		{name: "done, empty answer", outcome: &audit.RequestOutcome{Answer: []byte{}}, state: audit.RequestDone, answer: []byte{}},
		{name: "done, large answer", outcome: &audit.RequestOutcome{Answer: large}, state: audit.RequestDone, answer: large},
		{name: "unknown", outcome: &audit.RequestOutcome{}, state: audit.RequestUnknown},
		{name: "released", outcome: &audit.RequestOutcome{Release: true}},
		{name: "not settled", outcome: nil, state: audit.RequestRunning},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := audit.RequestKey{Caller: "user:alice", ID: fmt.Sprint("k", i)}
			exec := fmt.Sprint("exec-", i)
			first := claimFor(k, exec, "p")
			_, claimed := claim(t, s, first)
			require.True(t, claimed)
			execute(t, s, exec, "p", tt.outcome)
			got, claimed := claim(t, s, claimFor(k, exec+"-retry", "p"))
			if tt.state == 0 {
				require.True(t, claimed, "a released key is claimed anew")
				return
			}
			require.False(t, claimed)
			want := first
			want.State, want.Answer = tt.state, tt.answer
			requireHeld(t, want, got)
		})
	}
}

// testSettlesOnlyItsOwn: a terminal record settles the claim of its own
// execution only, and a release by another execution does nothing.
func testSettlesOnlyItsOwn(t *testing.T, h Harness) {
	s := openStore(t, h)
	k := audit.RequestKey{Caller: "user:alice", ID: "mine"}
	first := claimFor(k, "owner", "p")
	_, claimed := claim(t, s, first)
	require.True(t, claimed)
	execute(t, s, "someone-else", "p", &audit.RequestOutcome{Answer: []byte("not mine")})
	require.NoError(t, s.ReleaseRequest(ctx(t), k, "someone-else"))
	got, claimed := claim(t, s, claimFor(k, "retry", "p"))
	require.False(t, claimed)
	first.State = audit.RequestRunning
	requireHeld(t, first, got)

	// A settled key is not settled again, nor released, by its own
	// execution's later records.
	execute(t, s, "owner", "p", &audit.RequestOutcome{Answer: []byte("mine")})
	appendEvents(t, s, true, func() audit.Event {
		ev := event(failed, "owner", "p", "u")
		ev.Request = &audit.RequestOutcome{}
		return ev
	}())
	require.NoError(t, s.ReleaseRequest(ctx(t), k, "owner"))
	got, claimed = claim(t, s, claimFor(k, "retry", "p"))
	require.False(t, claimed)
	first.State, first.Answer = audit.RequestDone, []byte("mine")
	requireHeld(t, first, got)
}

// testClaimsSurviveRestart: running and settled keys, and their answers,
// are there after a restart (Close, then Open); a released key is not.
// (What a crash keeps is each store's own test: segstore's
// TestRequestJournalLostInACrash, for one.)
func testClaimsSurviveRestart(t *testing.T, h Harness) {
	s := openStore(t, h)
	keys := map[string]audit.Request{}
	for _, name := range []string{"running", "done", "unknown", "released", "released-by-record"} {
		k := audit.RequestKey{Caller: "cert:spiffe://example.org/" + name, ID: "id-" + name}
		keys[name] = claimFor(k, "e-"+name, "p-"+name)
		_, claimed := claim(t, s, keys[name])
		require.True(t, claimed)
	}
	// The running claim's execution is open, so that nothing may take
	// the claim over as never logged.
	appendEvents(t, s, true, event(received, "e-running", "p-running", "u"), event(started, "e-running", "p-running", "u"))
	execute(t, s, "e-done", "p-done", &audit.RequestOutcome{Answer: []byte("done answer")})
	execute(t, s, "e-unknown", "p-unknown", &audit.RequestOutcome{})
	execute(t, s, "e-released-by-record", "p-released-by-record", &audit.RequestOutcome{Release: true})
	require.NoError(t, s.ReleaseRequest(ctx(t), keys["released"].Key, "e-released"))
	appendEvents(t, s, true, event(received, "other", "p", "u"))

	s = restart(t, s, h)
	for name, want := range keys {
		got, claimed := claim(t, s, claimFor(want.Key, "after-restart", "p-"+name))
		switch name {
		case "released", "released-by-record":
			require.True(t, claimed, name)
			continue
		case "running":
			want.State = audit.RequestRunning
		case "done":
			want.State, want.Answer = audit.RequestDone, []byte("done answer")
		case "unknown":
			want.State = audit.RequestUnknown
		}
		require.False(t, claimed, name)
		requireHeld(t, want, got)
	}
}

// testExpiredKeys: a key claimed before since is taken over by the next
// claim; PurgeRequests removes the keys claimed before its time, and
// keeps the later ones.
func testExpiredKeys(t *testing.T, h Harness) {
	s := openStore(t, h)
	now := time.Now()
	old := audit.RequestKey{Caller: "user:alice", ID: "old"}
	oldClaim := claimFor(old, "e-old", "p")
	oldClaim.Claimed = now.Add(-2 * time.Hour)
	_, claimed := claim(t, s, oldClaim)
	require.True(t, claimed)
	execute(t, s, "e-old", "p", &audit.RequestOutcome{Answer: []byte("old answer")})

	got, claimed, err := s.ClaimRequest(ctx(t), claimFor(old, "e-new", "p2"), now.Add(-time.Hour))
	require.NoError(t, err)
	require.True(t, claimed, "a key claimed before since is forgotten")
	require.Equal(t, "e-new", got.ExecutionID)
	require.Equal(t, audit.RequestRunning, got.State)

	purged := audit.RequestKey{Caller: "user:alice", ID: "purged"}
	kept := audit.RequestKey{Caller: "user:alice", ID: "kept"}
	pc := claimFor(purged, "e-purged", "p")
	pc.Claimed = now.Add(-3 * time.Hour)
	_, claimed = claim(t, s, pc)
	require.True(t, claimed)
	execute(t, s, "e-purged", "p", &audit.RequestOutcome{})
	kc := claimFor(kept, "e-kept", "p")
	_, claimed = claim(t, s, kc)
	require.True(t, claimed)
	execute(t, s, "e-kept", "p", &audit.RequestOutcome{Answer: []byte("kept")})

	require.NoError(t, s.PurgeRequests(ctx(t), now.Add(-time.Hour)))
	_, claimed = claim(t, s, claimFor(purged, "e-after-purge", "p"))
	require.True(t, claimed, "a purged key is gone, even without since")
	execute(t, s, "e-after-purge", "p", &audit.RequestOutcome{Answer: []byte("again")})
	got, claimed = claim(t, s, claimFor(kept, "e-after-purge", "p"))
	require.False(t, claimed, "a later key is kept")
	require.Equal(t, []byte("kept"), got.Answer)

	s = restart(t, s, h)
	got, claimed = claim(t, s, claimFor(purged, "e-after-restart", "p"))
	require.False(t, claimed, "claimed again before the restart")
	require.Equal(t, []byte("again"), got.Answer)
	got, claimed = claim(t, s, claimFor(kept, "e-after-restart", "p"))
	require.False(t, claimed)
	require.Equal(t, []byte("kept"), got.Answer)
}

// testStaleClaim: a running claim whose OpenUntil (and grace period) has
// passed is taken over when its execution is not open in the log (it
// never reached it), and held while its execution is open.
func testStaleClaim(t *testing.T, h Harness) {
	s := openStore(t, h)
	past := time.Now().Add(-h.Grace - time.Minute)
	never := audit.RequestKey{Caller: "user:alice", ID: "never-logged"}
	c := claimFor(never, "e-never", "p")
	c.OpenUntil = past
	_, claimed := claim(t, s, c)
	require.True(t, claimed)
	got, claimed := claim(t, s, claimFor(never, "e-next", "p"))
	require.True(t, claimed, "a stale claim whose execution never reached the log is taken over")
	require.Equal(t, "e-next", got.ExecutionID)

	open := audit.RequestKey{Caller: "user:alice", ID: "open"}
	c = claimFor(open, "e-open", "p")
	c.OpenUntil = past
	_, claimed = claim(t, s, c)
	require.True(t, claimed)
	appendEvents(t, s, true, event(received, "e-open", "p", "u"), event(started, "e-open", "p", "u"))
	got, claimed = claim(t, s, claimFor(open, "e-next", "p"))
	require.False(t, claimed, "the execution is open: it may be with Stage-3")
	require.Equal(t, "e-open", got.ExecutionID)
	require.Equal(t, audit.RequestRunning, got.State)

	fresh := audit.RequestKey{Caller: "user:alice", ID: "fresh"}
	_, claimed = claim(t, s, claimFor(fresh, "e-fresh", "p"))
	require.True(t, claimed)
	_, claimed = claim(t, s, claimFor(fresh, "e-next", "p"))
	require.False(t, claimed, "before its OpenUntil a claim is held, logged or not")
}

func testRequestCallsAfterClose(t *testing.T, h Harness) {
	s := h.Open(t)
	require.NoError(t, s.Close())
	k := audit.RequestKey{Caller: "user:alice", ID: "x"}
	_, _, err := s.ClaimRequest(ctx(t), claimFor(k, "e", "p"), time.Time{})
	require.ErrorIs(t, err, audit.ErrClosed)
	require.ErrorIs(t, s.ReleaseRequest(ctx(t), k, "e"), audit.ErrClosed)
	require.ErrorIs(t, s.PurgeRequests(ctx(t), time.Now()), audit.ErrClosed)
}

// testRequestCallsBounded: with a cancelled ctx a call returns at once,
// with an error wrapping ctx's or its result; a refused claim claimed
// nothing.
func testRequestCallsBounded(t *testing.T, h Harness) {
	s := openStore(t, h)
	k := audit.RequestKey{Caller: "user:alice", ID: "x"}
	c, cancel := context.WithCancel(context.Background())
	cancel()
	_, claimed, err := s.ClaimRequest(c, claimFor(k, "e", "p"), time.Time{})
	if err != nil {
		require.ErrorIs(t, err, context.Canceled)
		_, claimed = claim(t, s, claimFor(k, "e2", "p"))
		require.True(t, claimed, "the refused claim claimed nothing")
	} else {
		require.True(t, claimed)
	}
	for name, call := range map[string]func() error{
		"ReleaseRequest": func() error { return s.ReleaseRequest(c, k, "e") },
		"PurgeRequests":  func() error { return s.PurgeRequests(c, time.Now().Add(-time.Hour)) },
	} {
		if err := call(); err != nil {
			require.ErrorIs(t, err, context.Canceled, name)
		}
	}
}

// testRequestCallsBroken: while the storage refuses, a claim fails with
// ErrUnavailable and claims nothing.
func testRequestCallsBroken(t *testing.T, h Harness) {
	need(t, "broken storage", h.Break != nil)
	s := openStore(t, h)
	if !h.Recovers {
		// A local store notices a broken disk at its next write; claims
		// are refused from then on.
		h.Break(t)
		_ = s.Append(ctx(t), true, render([]audit.Event{event(received, "a", "p", "u")}, time.Time{}, nil))
	} else {
		h.Break(t)
	}
	k := audit.RequestKey{Caller: "user:alice", ID: "x"}
	_, _, err := s.ClaimRequest(ctx(t), claimFor(k, "e", "p"), time.Time{})
	require.ErrorIs(t, err, audit.ErrUnavailable)
	h.Heal(t)
	if !h.Recovers {
		s = restart(t, s, h)
	}
	_, claimed := claim(t, s, claimFor(k, "e2", "p"))
	require.True(t, claimed, "the refused claim claimed nothing")
}
