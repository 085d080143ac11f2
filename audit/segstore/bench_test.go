package segstore_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// noSyncFile makes Sync a no-op: the non-durable baseline for the benchmark
// only. A log on it loses acknowledged events in a power cut.
type noSyncFile struct{ segstore.File }

func (noSyncFile) Sync() error { return nil }

// BenchmarkAppend measures audit.Log's Append on the segmented store, with
// a sync per group commit and without, at 1, 16 and 64 concurrent writers
// (make bench compares the two at 64 writers).
func BenchmarkAppend(b *testing.B) {
	for _, durable := range []bool{true, false} {
		for _, writers := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("fsync=%t/writers=%d", durable, writers), func(b *testing.B) {
				opts := []segstore.Option{}
				if !durable {
					opts = append(opts, segstore.WithFileWrapper(func(f segstore.File) segstore.File { return noSyncFile{f} }))
				}
				// Opened twice: the first Open makes the log and starts
				// preparing the next segment in the background (64 MiB of
				// zeros, once per segment), which would dominate a short
				// run; the second finds it ready.
				dir := b.TempDir()
				store, err := segstore.Open(dir, opts...)
				if err == nil {
					err = store.Close()
				}
				if err == nil {
					store, err = segstore.Open(dir, opts...)
				}
				if err != nil {
					b.Fatal(err)
				}
				lg, err := audit.New(store)
				if err != nil {
					b.Fatal(err)
				}
				defer lg.Close()
				// The shape of a PLAN_RECEIVED event of a two-step plan.
				details, err := structpb.NewStruct(map[string]any{
					"trigger_type": "manual", "step_count": 2, "binding_count": 1,
					"steps": []any{"text.upper", "text.reverse"}, "peer": "10.1.2.3:54321",
					"token_fingerprint": "sha256:0123456789abcdef",
				})
				if err != nil {
					b.Fatal(err)
				}
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ReportAllocs()
				b.ResetTimer()
				for range writers {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							// One execution id, as audit/filestore's
							// benchmark: the store's own cost, not that
							// of a million executions left open.
							if _, err := lg.Append(context.Background(), &stage4v1.AuditEvent{
								Type: received, ExecutionId: "0123456789abcdef0123456789abcdef",
								PlanId: "sha256:4f2a0b7c9d1e3f5a6b8c0d2e4f6a8b0c1d3e5f7a9b1c3d5e7f9a1b3c5d7e9f1a", UserId: "alice",
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
