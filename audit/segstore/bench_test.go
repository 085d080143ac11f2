package segstore_test

import (
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
