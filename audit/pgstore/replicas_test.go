package pgstore_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/internal/pgtest"
)

// TestConcurrentFirstStart opens several stores at the same moment on an
// empty database: the migration lock lets one create the schema and the
// others find it, so all open, with one schema version row and one log id.
func TestConcurrentFirstStart(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	const n = 8
	stores := make([]*pgstore.Store, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start // release them together, to race the migrations
			stores[i], errs[i] = pgstore.Open(testCtx(t), url, pgstore.WithReplicaName(fmt.Sprint("replica-", i)))
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i], "store %d", i)
		t.Cleanup(func() { stores[i].Close() })
	}
	require.Equal(t, int64(pgstore.SchemaVersion), query[int64](t, url, "SELECT count(*) FROM audit_schema_version"))
	require.Equal(t, int64(1), query[int64](t, url, "SELECT count(*) FROM audit_meta"))

	// One log: a cursor of one store is valid on every other, and so is
	// the key that page tokens are made with.
	mustAppend(t, stores[0], event(received, "a", "u"), event(received, "b", "u"))
	page, err := stores[0].List(testCtx(t), audit.Query{Limit: 1})
	require.NoError(t, err)
	key, err := stores[0].FingerprintKey(testCtx(t))
	require.NoError(t, err)
	for _, s := range stores[1:] {
		other, err := s.FingerprintKey(testCtx(t))
		require.NoError(t, err)
		require.Equal(t, key, other)
		next, err := s.List(testCtx(t), audit.Query{Limit: 1, From: page.Next})
		require.NoError(t, err)
		require.Equal(t, "b", next.Events[0].ExecutionID)
	}
}

// TestReplicasAppendConcurrently has two and three stores, as replicas of
// one gateway, append batches of varied sizes from goroutines at once.
// The head row lock must make one gapless chain holding every record
// exactly once.
func TestReplicasAppendConcurrently(t *testing.T) {
	t.Parallel()
	for _, replicas := range []int{2, 3} {
		t.Run(fmt.Sprint(replicas, " replicas"), func(t *testing.T) {
			t.Parallel()
			url := pgtest.NewDatabase(t)
			const batches = 40
			stores := make([]*pgstore.Store, replicas)
			for i := range stores {
				stores[i] = open(t, url, pgstore.WithReplicaName(fmt.Sprint("replica-", i)))
			}
			start := make(chan struct{})
			errs := make(chan error, replicas*batches)
			var wg sync.WaitGroup
			for r, s := range stores {
				wg.Go(func() {
					<-start
					next := 0
					for b := range batches {
						var evs []audit.Event
						for range 1 + b%5 { // batch sizes 1 to 5
							evs = append(evs, event(received, execID(r, next), fmt.Sprint("user-", r)))
							next++
						}
						errs <- s.Append(testCtx(t), b%2 == 0, renderer(evs, time.Time{}, nil))
					}
				})
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			perReplica := 0
			for b := range batches {
				perReplica += 1 + b%5
			}
			total := uint64(replicas * perReplica)

			res := mustVerify(t, url) // one chain, gapless from 1, head at its end
			require.Equal(t, total, res.Records)
			// The last batches may have been the non-durable ones, which
			// are listed once a durable batch follows.
			mustAppend(t, stores[0], event(received, "last", "user-0"))
			total++

			seen := map[string]int{}
			for _, ev := range listAll(t, stores[0], audit.Query{}) {
				seen[ev.ExecutionID]++
			}
			require.Len(t, seen, int(total))
			require.Equal(t, 1, seen["last"])
			for r := range replicas {
				for i := range perReplica {
					require.Equal(t, 1, seen[execID(r, i)], "record %s", execID(r, i))
				}
			}
		})
	}
}
