package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/audit/storetest"
	"github.com/stage4/stage4/internal/pgtest"
)

// TestConformance runs the suite every audit store passes, on a database
// of its own reached through a proxy that can refuse, hold (a partition)
// and cut connections.
func TestConformance(t *testing.T) {
	const grace = time.Second
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		url := pgtest.NewDatabase(t)
		proxy := pgtest.NewProxy(t, url)
		via := proxy.URL(url)
		return storetest.Harness{
			// One name for every process of this log: a restart.
			Open: func(t *testing.T) audit.Store {
				return open(t, via, pgstore.WithReplicaName("conformance"), pgstore.WithGracePeriod(grace))
			},
			OpenReplica: func(t *testing.T, name string) audit.Store {
				return open(t, via, pgstore.WithReplicaName(name), pgstore.WithGracePeriod(grace))
			},
			Break: func(*testing.T) {
				proxy.Refuse(true)
				proxy.CutAll()
			},
			Hang: func(*testing.T) { proxy.Hold() },
			Heal: func(*testing.T) {
				proxy.Release()
				proxy.Refuse(false)
			},
			Recovers: true,
			LoseAnswer: func(*testing.T) {
				// The COMMIT lands but its answer is cut, and the store
				// cannot reach the database to ask until Heal.
				proxy.CutAtNextCommit(true)
				proxy.Refuse(true)
			},
			Grace: grace,
			// An operator's edits of the tables, as in docs/AUDIT_LOG.md's
			// threat model.
			RollBack: func(t *testing.T, to audit.Head) {
				pgtest.Exec(t, url, `WITH d AS (DELETE FROM audit_records WHERE sequence > $1)
					UPDATE audit_head SET sequence = $1, hash = $2, tree = $3, durable_sequence = least(durable_sequence, $1) WHERE id = 1`,
					int64(to.Sequence), to.Hash[:], concatHashes(to.Tree))
			},
			BreakHead: func(t *testing.T) {
				pgtest.Exec(t, url, "UPDATE audit_head SET hash = sha256(hash) WHERE id = 1")
			},
			DeleteRecord: func(t *testing.T, seq uint64) {
				pgtest.Exec(t, url, "DELETE FROM audit_records WHERE sequence = $1", int64(seq))
			},
		}
	})
}

// concatHashes is a tree edge as audit_head.tree holds it.
func concatHashes(hashes []tlog.Hash) []byte {
	var b []byte
	for _, h := range hashes {
		b = append(b, h[:]...)
	}
	return b
}

// open opens a store that the test closes at its end (again, if the test
// closed it already: Close is idempotent).
func open(t testing.TB, url string, opts ...pgstore.Option) *pgstore.Store {
	t.Helper()
	s, err := pgstore.Open(testCtx(t), url, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}
