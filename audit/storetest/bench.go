package storetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stage4/stage4/audit"
)

// BenchmarkAppend measures audit.Log's Append on a store, with a sync per
// group commit and without (newLog opens a log whose store skips its
// syncs when durable is false), at 1, 16 and 64 concurrent writers: the
// same benchmark for every local store, which make bench compares at 64
// writers.
func BenchmarkAppend(b *testing.B, newLog func(b *testing.B, durable bool) *audit.Log) {
	for _, durable := range []bool{true, false} {
		for _, writers := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("fsync=%t/writers=%d", durable, writers), func(b *testing.B) {
				lg := newLog(b, durable)
				defer lg.Close()
				// The shape of a PLAN_RECEIVED event of a two-step plan.
				details := audit.Details{
					"trigger_type": "manual", "step_count": 2.0, "binding_count": 1.0,
					"steps": []any{"text.upper", "text.reverse"}, "peer": "10.1.2.3:54321",
					"token_fingerprint": "sha256:0123456789abcdef",
				}
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ReportAllocs()
				b.ResetTimer()
				for range writers {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							// One execution id: the store's own cost, not
							// that of a million executions left open.
							if _, err := lg.Append(context.Background(), audit.Event{
								Type: received, ExecutionID: "0123456789abcdef0123456789abcdef",
								PlanID: "sha256:4f2a0b7c9d1e3f5a6b8c0d2e4f6a8b0c1d3e5f7a9b1c3d5e7f9a1b3c5d7e9f1a", UserID: "alice",
								Details: details,
							}); err != nil {
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
