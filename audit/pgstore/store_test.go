package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/audit/storetest"
	"github.com/stage4/stage4/internal/pgtest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Opener {
		url := pgtest.NewDatabase(t)
		return func(t *testing.T) audit.Store {
			// One name for every process of this log: a restart.
			return open(t, url, pgstore.WithReplicaName("conformance"))
		}
	})
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
