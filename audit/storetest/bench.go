package storetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// BenchmarkExecution measures the audit side of one ExecutePlan, as the
// server does it, through audit.Log on a store: PLAN_RECEIVED without a
// sync, EXECUTION_STARTED and EXECUTION_COMPLETED durable, at 1 and 64
// concurrent executions, without a request_id ("plain") and with one
// ("keyed": its claim first, and a 1 KiB answer on the terminal event):
// what idempotency adds to a store. The two kinds alternate in small
// rounds on one log, so that they share the machine's noise; it reports
// the time per execution of each and their ratio. newLog opens a log on a
// new store.
func BenchmarkExecution(b *testing.B, newLog func(b *testing.B) *audit.Log) {
	details := audit.Details{
		"trigger_type": "manual", "step_count": 2.0, "binding_count": 1.0,
		"steps": []any{"text.upper", "text.reverse"}, "peer": "10.1.2.3:54321",
		"token_fingerprint": "sha256:0123456789abcdef",
	}
	answer := make([]byte, 1024)
	for _, writers := range []int{1, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			lg := newLog(b)
			defer lg.Close()
			ctx := context.Background()
			var id atomic.Int64
			execute := func(keyed bool) error {
				exec := fmt.Sprintf("%032x", id.Add(1))
				ev := func(t audit.EventType) audit.Event {
					return audit.Event{Type: t, ExecutionID: exec, PlanID: "hmac-sha256:plan", UserID: "alice", Details: details}
				}
				end := ev(completed)
				if keyed {
					_, claimed, err := lg.ClaimRequest(ctx, audit.Request{
						Key: audit.RequestKey{Caller: "user:alice", ID: exec}, PlanID: "hmac-sha256:plan", ExecutionID: exec,
					}, time.Time{})
					if err != nil || !claimed {
						return fmt.Errorf("claim: %v, %v", claimed, err)
					}
					end.Request = &audit.RequestOutcome{Answer: answer}
				}
				err := lg.AppendUnsynced(ctx, ev(received))
				if err == nil {
					_, err = lg.Append(ctx, ev(started))
				}
				if err == nil {
					_, err = lg.Append(ctx, end)
				}
				return err
			}
			// round runs n executions of one kind from the writers.
			round := func(keyed bool, n int) time.Duration {
				var next atomic.Int64
				var wg sync.WaitGroup
				began := time.Now()
				for range writers {
					wg.Go(func() {
						for next.Add(1) <= int64(n) {
							if err := execute(keyed); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				return time.Since(began)
			}
			per := 20 * writers // executions of one kind per round
			var spent [2]time.Duration
			done := 0
			b.ReportAllocs()
			b.ResetTimer()
			for r := 0; done < b.N; r++ {
				n := min(per, b.N-done)
				first := r%2 == 0 // alternate which kind goes first
				spent[btoi(!first)] += round(!first, n)
				spent[btoi(first)] += round(first, n)
				done += n
			}
			plain, keyed := float64(spent[0])/float64(b.N), float64(spent[1])/float64(b.N)
			b.ReportMetric(plain, "plain-ns/exec")
			b.ReportMetric(keyed, "keyed-ns/exec")
			b.ReportMetric(keyed/plain, "keyed/plain")
		})
	}
}

func btoi(v bool) int {
	if v {
		return 1
	}
	return 0
}
