package pgstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/internal/pgtest"
)

// TestDatabaseStoppedAndStarted stops the database under a store, the way
// a crash would, and starts it again: while it is down, Ping, Append and
// List fail quickly with ErrUnavailable (Append never with
// ErrOutcomeUnknown: nothing was committed); once it is back, the same
// store works again without being reopened, and the log is intact.
func TestDatabaseStoppedAndStarted(t *testing.T) {
	t.Parallel()
	cluster := pgtest.StartCluster(t)
	url := pgtest.NewDatabaseOn(t, cluster.URL())
	s := open(t, url)
	mustAppend(t, s, event(received, "before", "u"))
	require.NoError(t, s.Ping(testCtx(t)))

	cluster.Stop()
	began := time.Now()
	err := s.Ping(testCtx(t))
	require.ErrorIs(t, err, audit.ErrUnavailable)
	require.Less(t, time.Since(began), 3*time.Second, "Ping is bounded")
	err = s.Append(testCtx(t), true, renderer([]audit.Event{event(started, "during", "u")}, time.Time{}, nil))
	require.ErrorIs(t, err, audit.ErrUnavailable)
	require.NotErrorIs(t, err, audit.ErrOutcomeUnknown)
	_, err = s.List(testCtx(t), audit.Query{Limit: 10})
	require.ErrorIs(t, err, audit.ErrUnavailable)
	_, err = s.Interrupted(testCtx(t))
	require.ErrorIs(t, err, audit.ErrUnavailable)

	cluster.Start()
	// Polling for "the store sees the database again", with a deadline:
	// the pool may hand out a connection that died with the server once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for err := s.Ping(ctx); err != nil; err = s.Ping(ctx) {
		require.True(t, errors.Is(err, audit.ErrUnavailable) && ctx.Err() == nil, "Ping did not recover: %v", err)
	}
	recs := mustAppend(t, s, event(started, "after", "u"))
	require.Equal(t, uint64(2), recs[0].Sequence)
	require.Equal(t, uint64(2), mustVerify(t, url).Records)
}

// TestOpenUnreachable: a database that cannot be reached fails Open with
// ErrUnavailable, and Verify with an error that is not damage.
func TestOpenUnreachable(t *testing.T) {
	t.Parallel()
	// Port 1 on loopback: nothing listens there, the connection is refused.
	url := "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"
	_, err := pgstore.Open(testCtx(t), url)
	require.ErrorIs(t, err, audit.ErrUnavailable)
	_, err = pgstore.Verify(testCtx(t), url)
	require.Error(t, err)
	var chainErr *audit.ChainError
	require.False(t, errors.As(err, &chainErr))
}
