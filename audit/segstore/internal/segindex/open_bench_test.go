package segindex

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// countingFile counts the reads a Run makes of its file.
type countingFile struct {
	*os.File
	reads atomic.Int64
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	return c.File.ReadAt(p, off)
}

// openCounting opens the run at path as OpenRun does and returns it with the
// number of reads opening it took.
func openCounting(t testing.TB, path string) (*Run, int64) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	c := &countingFile{File: f}
	r, err := openRunFile(c, path, defaultWindow)
	require.NoError(t, err)
	return r, c.reads.Load()
}

// writeSequential writes the run of records 1..count with one entry each,
// generated in order rather than held in memory, and returns its path: the
// cost of opening a run depends only on its count.
func writeSequential(t testing.TB, dir string, count uint64) string {
	t.Helper()
	path, err := createRun(dir, 1, count, count, fenceStride, func(emit func(Entry) error) error {
		for i := range count {
			if err := emit(Entry{Key: i * 2654435761, Seq: i + 1, Offset: uint32(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	return path
}

// TestOpenRunReads checks that opening a run takes two reads, the header and
// the fence, whatever the run's size: on a cold page cache each read is a
// disk access, and the store opens its runs at start-up.
func TestOpenRunReads(t *testing.T) {
	t.Parallel()
	for _, count := range []uint64{1, fenceStride, fenceStride + 1, 100_000} {
		t.Run(fmt.Sprint(count), func(t *testing.T) {
			t.Parallel()
			r, reads := openCounting(t, writeSequential(t, t.TempDir(), count))
			defer r.Close()
			require.Equal(t, int64(2), reads)
			require.Len(t, r.fence, int(fenceLen(count, fenceStride)))
			require.NoError(t, r.Verify())
		})
	}
}

// BenchmarkOpenRun opens runs of 1M and 10M entries (20 and 200 MB) with a
// warm page cache, and reports the reads an open takes, which on a cold
// cache are each a disk access.
func BenchmarkOpenRun(b *testing.B) {
	for _, count := range []uint64{1_000_000, 10_000_000} {
		b.Run(fmt.Sprintf("entries=%d", count), func(b *testing.B) {
			path := writeSequential(b, b.TempDir(), count)
			r, reads := openCounting(b, path)
			r.Close()
			for b.Loop() {
				r, err := OpenRun(path)
				if err != nil {
					b.Fatal(err)
				}
				r.Close()
			}
			// After the loop: its start resets reported metrics.
			b.ReportMetric(float64(reads), "reads/op")
		})
	}
}
