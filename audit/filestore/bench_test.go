package filestore_test

import (
	"testing"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	"github.com/stage4/stage4/audit/storetest"
)

// noSyncFile makes Sync a no-op: the non-durable baseline for the benchmark
// only. A log on it loses acknowledged events in a power cut.
type noSyncFile struct{ filestore.File }

func (noSyncFile) Sync() error { return nil }

// BenchmarkAppend measures Append with fsync and group commit at 1, 16 and 64
// concurrent writers, next to the same without fsync.
func BenchmarkAppend(b *testing.B) {
	storetest.BenchmarkAppend(b, func(b *testing.B, durable bool) *audit.Log {
		var opts []any
		if !durable {
			opts = append(opts, filestore.WithFileWrapper(func(f filestore.File) filestore.File { return noSyncFile{f} }))
		}
		lg, err := open(b.TempDir()+"/audit.jsonl", opts...)
		if err != nil {
			b.Fatal(err)
		}
		return lg.Log
	})
}
