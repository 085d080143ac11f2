package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/pgtest"
)

// BenchmarkExecutePlanRequestID is BenchmarkExecutePlan's whole
// in-process stack (an 8-step plan) with a new request_id on every call
// against none, at 1 and 64 callers, on a log directory and on
// PostgreSQL: what idempotency costs. Compare the pairs of one run; run
// with -count to see the noise.
func BenchmarkExecutePlanRequestID(b *testing.B) {
	stores := []struct {
		name  string
		store func(testing.TB) audit.Store
	}{
		{"dir", nil},
		{"postgres", func(tb testing.TB) audit.Store {
			s, err := pgstore.Open(context.Background(), pgtest.NewDatabase(tb))
			require.NoError(tb, err)
			return s
		}},
	}
	for _, st := range stores {
		for _, callers := range []int{1, 64} {
			for _, keyed := range []bool{false, true} {
				b.Run(fmt.Sprintf("store=%s/callers=%d/request_id=%t", st.name, callers, keyed), func(b *testing.B) {
					h := newHarness(b, harnessOptions{store: st.store})
					plan := chainPlan(8)
					var n atomic.Int64
					b.ReportAllocs()
					b.ResetTimer()
					var wg sync.WaitGroup
					for range callers {
						wg.Go(func() {
							for {
								i := n.Add(1)
								if i > int64(b.N) {
									return
								}
								req := &stage4v1.ExecutePlanRequest{Plan: plan}
								if keyed {
									req.RequestId = fmt.Sprintf("bench-%p-%d", b, i)
								}
								if _, err := h.client.ExecutePlan(context.Background(), req); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
					wg.Wait()
				})
			}
		}
	}
}
