package segstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	"github.com/stage4/stage4/audit/storetest"
)

// noSyncFile makes Sync a no-op: the non-durable baseline for the benchmark
// only. A log on it loses acknowledged events in a power cut.
type noSyncFile struct{ segstore.File }

func (noSyncFile) Sync() error { return nil }

// BenchmarkAppend measures audit.Log's Append on the segmented store, with
// a sync per group commit and without, at 1, 16 and 64 concurrent writers
// (make bench compares the two at 64 writers).
func BenchmarkAppend(b *testing.B) {
	storetest.BenchmarkAppend(b, func(b *testing.B, durable bool) *audit.Log {
		var opts []segstore.Option
		if !durable {
			opts = append(opts, segstore.WithFileWrapper(func(f segstore.File) segstore.File { return noSyncFile{f} }))
		}
		// Opened twice: the first Open makes the log and starts preparing
		// the next segment in the background (64 MiB of zeros, once per
		// segment), which would dominate a short run; the second finds it
		// ready.
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
		return lg
	})
}

// BenchmarkExecution measures an execution's audit events with and
// without a request_id on a log directory.
func BenchmarkExecution(b *testing.B) {
	storetest.BenchmarkExecution(b, func(b *testing.B) *audit.Log {
		dir := b.TempDir()
		store, err := segstore.Open(dir)
		if err == nil {
			err = store.Close()
		}
		if err == nil {
			store, err = segstore.Open(dir)
		}
		if err != nil {
			b.Fatal(err)
		}
		lg, err := audit.New(store)
		if err != nil {
			b.Fatal(err)
		}
		return lg
	})
}

// BenchmarkListByType measures a page of 1000 events listed by type through
// the index, on a log of 20,000 executions of two events each: the work of
// an audit reader (ListAuditEvents), per page.
func BenchmarkListByType(b *testing.B) {
	store, err := segstore.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	lg, err := audit.New(store)
	if err != nil {
		b.Fatal(err)
	}
	defer lg.Close()
	ctx := context.Background()
	details := audit.Details{"trigger_type": "manual", "step_count": 2.0, "steps": []any{"text.upper", "text.reverse"}, "peer": "10.1.2.3:54321"}
	for i := range 20_000 {
		exec := fmt.Sprintf("%032x", i)
		for _, typ := range []audit.EventType{audit.PlanReceived, audit.ExecutionCompleted} {
			if _, err := lg.Append(ctx, audit.Event{Type: typ, ExecutionID: exec, PlanID: "sha256:4f2a", UserID: "alice", Details: details}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportAllocs()
	token := ""
	for b.Loop() {
		// The listing's last page may be empty; then it starts over.
		_, next, err := lg.List(ctx, audit.Filter{Type: audit.PlanReceived}, 1000, token)
		if err != nil {
			b.Fatal(err)
		}
		token = next
	}
}
