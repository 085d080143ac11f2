package pgstore_test

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/internal/pgtest"
)

const grace = time.Minute

// appendOpen appends events whose open executions have the deadline until.
func appendOpen(t *testing.T, s *pgstore.Store, until time.Time, evs ...audit.Event) {
	t.Helper()
	require.NoError(t, s.Append(testCtx(t), true, renderer(evs, until, nil)))
}

// stale makes a replica look dead to the others: its heartbeat is older
// than the grace period, as when its process stopped without closing.
func stale(t *testing.T, url string, s *pgstore.Store) {
	t.Helper()
	pgtest.Exec(t, url, "UPDATE audit_replicas SET last_seen = now() - interval '1 hour' WHERE instance_id = $1", s.InstanceID())
}

// claimConcurrently calls Interrupted on every store at once and returns
// what each got.
func claimConcurrently(t *testing.T, stores ...*pgstore.Store) [][]audit.OpenExecution {
	t.Helper()
	got := make([][]audit.OpenExecution, len(stores))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, s := range stores {
		wg.Go(func() {
			<-start
			var err error
			got[i], err = s.Interrupted(testCtx(t))
			require.NoError(t, err)
		})
	}
	close(start)
	wg.Wait()
	return got
}

func ids(lists ...[]audit.OpenExecution) []string {
	var out []string
	for _, l := range lists {
		for _, e := range l {
			out = append(out, e.ExecutionID)
		}
	}
	return out
}

// TestInterruptedDeadReplica: replica A runs executions and dies (its
// heartbeat goes stale, it never closes). Replicas B and C ask at the same
// moment: an execution whose deadline and grace period have passed goes
// to exactly one of them; one whose deadline has not passed goes to
// neither, and nothing of A's goes anywhere while A is alive.
func TestInterruptedDeadReplica(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	a := open(t, url, pgstore.WithReplicaName("a"), pgstore.WithGracePeriod(grace))
	b := open(t, url, pgstore.WithReplicaName("b"), pgstore.WithGracePeriod(grace))
	c := open(t, url, pgstore.WithReplicaName("c"), pgstore.WithGracePeriod(grace))

	past := time.Now().Add(-2 * grace)
	appendOpen(t, a, past, event(received, "expired-started", "u"), event(started, "expired-started", "u"))
	appendOpen(t, a, past, event(received, "expired-received", "u"))
	appendOpen(t, a, time.Now().Add(time.Hour), event(received, "running", "u"), event(started, "running", "u"))

	require.NoError(t, a.Ping(testCtx(t)))
	got := claimConcurrently(t, b, c)
	require.Empty(t, ids(got...), "A is alive: its executions are never handed out, deadline or not")

	stale(t, url, a)
	claimed := claimConcurrently(t, b, c)
	require.ElementsMatch(t, []string{"expired-started", "expired-received"}, ids(claimed...), "each exactly once, to one replica")
	got = claimConcurrently(t, b, c)
	require.Empty(t, ids(got...), "claimed by a live replica: not again")

	// The claimer closes what it got; the others never see it again, even
	// once the claimer is gone.
	for i, s := range []*pgstore.Store{b, c} {
		for _, e := range claimed[i] {
			mustAppend(t, s, event(failed, e.ExecutionID, e.UserID))
		}
	}
	require.Equal(t, []string{"running"}, openRows(t, url))
}

// TestInterruptedOwnExpired: an execution whose terminal event its owner
// could not store (the database was down when the call ended) is closed
// by the owner itself once its deadline and the grace period have passed,
// never before, and never by a live other replica.
func TestInterruptedOwnExpired(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	a := open(t, url, pgstore.WithReplicaName("a"), pgstore.WithGracePeriod(grace))
	b := open(t, url, pgstore.WithReplicaName("b"), pgstore.WithGracePeriod(grace))
	appendOpen(t, a, time.Now().Add(-2*grace), event(received, "lost-terminal", "u"), event(started, "lost-terminal", "u"))
	appendOpen(t, a, time.Now().Add(time.Hour), event(received, "running", "u"), event(started, "running", "u"))
	require.NoError(t, a.Ping(testCtx(t)))

	got, err := b.Interrupted(testCtx(t))
	require.NoError(t, err)
	require.Empty(t, ids(got), "A is alive: B never takes its executions")
	got, err = a.Interrupted(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, []string{"lost-terminal"}, ids(got), "the owner closes its own expired execution, not the running one")
	mustAppend(t, a, event(failed, "lost-terminal", "u"))
	require.Equal(t, []string{"running"}, openRows(t, url))
}

// TestInterruptedClaimerDied: a replica that claimed an execution and died
// before closing it leaves it to the next live replica.
func TestInterruptedClaimerDied(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	a := open(t, url, pgstore.WithReplicaName("a"), pgstore.WithGracePeriod(grace))
	b := open(t, url, pgstore.WithReplicaName("b"), pgstore.WithGracePeriod(grace))
	c := open(t, url, pgstore.WithReplicaName("c"), pgstore.WithGracePeriod(grace))
	appendOpen(t, a, time.Now().Add(-2*grace), event(received, "x", "u"))
	stale(t, url, a)

	got, err := b.Interrupted(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, []string{"x"}, ids(got))
	got, err = c.Interrupted(testCtx(t))
	require.NoError(t, err)
	require.Empty(t, got, "B is alive and holds the claim")

	stale(t, url, b)
	got, err = c.Interrupted(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, []audit.OpenExecution{{ExecutionID: "x", PlanID: "sha256:plan-x", UserID: "u", LastType: received, Sequence: 1}}, got)
}

// TestInterruptedRestartUnderSameName: a process that opens the store
// under the name of a live one does not take its executions (it cannot
// hold the name's lock); once the other has stopped, it takes them at
// once, without waiting for their deadline.
func TestInterruptedRestartUnderSameName(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	first := open(t, url, pgstore.WithReplicaName("pod-0"))
	appendOpen(t, first, time.Now().Add(time.Hour), event(received, "x", "u"), event(started, "x", "u"))

	second := open(t, url, pgstore.WithReplicaName("pod-0"))
	got, err := second.Interrupted(testCtx(t))
	require.NoError(t, err)
	require.Empty(t, got, "the first process of that name is still running")

	require.NoError(t, first.Close())
	got, err = second.Interrupted(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, []string{"x"}, ids(got))
	require.Equal(t, started, got[0].LastType)
}

func openRows(t *testing.T, url string) []string {
	t.Helper()
	return query[[]string](t, url, "SELECT coalesce(array_agg(execution_id ORDER BY sequence), '{}') FROM audit_open")
}
