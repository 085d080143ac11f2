package pgstore_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/audit/storetest"
	"github.com/stage4/stage4/internal/pgtest"
)

// benchEvent is a typical PLAN_RECEIVED: about 600 bytes as a record.
func benchEvent(i int) audit.Event {
	return audit.Event{
		Type:        received,
		ExecutionID: fmt.Sprintf("%032x", i),
		PlanID:      "sha256:f1963881e022a0d807a2af2c2351c84a13e82a898b7127a267e156fb9f65ef50",
		UserID:      "alice",
		Details: audit.Details{
			"trigger_type":      "manual",
			"step_count":        2.0,
			"steps":             []any{"text.upper", "text.reverse"},
			"binding_count":     1.0,
			"peer":              "10.0.0.7:51234",
			"token_fingerprint": "sha256:405dc451fc1115f2",
		},
	}
}

// BenchmarkAppend measures Store.Append: one op is one batch (the records
// of one group commit of the log: 1, 16 or 64 callers), reported as
// records/s. Variants: durable (synchronous commit, the default insert by
// INSERT … unnest), copy (the same with COPY), nondurable (durable=false:
// synchronous_commit off), nondurable-sync (durable=false committed
// synchronously anyway, to see what the setting buys), and 2 and 3
// replicas appending durable batches at once, each its own store.
func BenchmarkAppend(b *testing.B) {
	variants := []struct {
		name     string
		replicas int
		durable  bool
		opts     []pgstore.Option
	}{
		{"durable", 1, true, nil},
		{"copy", 1, true, []pgstore.Option{pgstore.WithCopyFrom()}},
		{"nondurable", 1, false, nil},
		{"nondurable-sync", 1, false, []pgstore.Option{pgstore.WithSyncNonDurable()}},
		{"2-replicas", 2, true, nil},
		{"3-replicas", 3, true, nil},
	}
	for _, v := range variants {
		for _, batch := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/batch=%d", v.name, batch), func(b *testing.B) {
				url := pgtest.NewDatabase(b)
				stores := make([]*pgstore.Store, v.replicas)
				for i := range stores {
					stores[i] = open(b, url, append(v.opts, pgstore.WithReplicaName(fmt.Sprint("bench-", i)))...)
				}
				evs := make([]audit.Event, batch)
				for i := range evs {
					evs[i] = benchEvent(i)
				}
				build := func(h audit.Head) ([]audit.Record, error) {
					return audit.RenderRecords(h, time.Now(), evs)
				}
				ctx := testCtx(b)
				b.ResetTimer()
				began := time.Now()
				var wg sync.WaitGroup
				errs := make([]error, len(stores))
				for r, s := range stores {
					wg.Go(func() {
						// Replica r does every len(stores)-th op.
						for i := r; i < b.N; i += len(stores) {
							if err := s.Append(ctx, v.durable, build); err != nil {
								errs[r] = err
								return
							}
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(began)
				b.StopTimer()
				for _, err := range errs {
					require.NoError(b, err)
				}
				b.ReportMetric(float64(b.N*batch)/elapsed.Seconds(), "records/s")
			})
		}
	}
}

// BenchmarkExecution measures an execution's audit events with and
// without a request_id on PostgreSQL (storetest.BenchmarkExecution).
func BenchmarkExecution(b *testing.B) {
	storetest.BenchmarkExecution(b, func(b *testing.B) *audit.Log {
		lg, err := audit.New(open(b, pgtest.NewDatabase(b)))
		require.NoError(b, err)
		return lg
	})
}
