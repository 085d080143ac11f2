//go:build linux

package segstore_test

// These benchmarks answer one design question for size-bounded segments:
// does preallocating a segment, so that an append no longer changes the file
// size, make a data-only sync (fdatasync) cheaper than today's growing
// O_APPEND file with fsync? etcd's WAL and PostgreSQL's WAL segments assume
// so. They measure only the filesystem; nothing here depends on segstore.
//
// Run them in interleaved rounds so that the modes share the machine's noise:
//
//	for i in 1 2 3 4 5; do go test ./audit/segstore/ -run '^$' \
//	    -bench BenchmarkSegmentSync -benchtime 3000x -count 1; done

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	segSize   = 64 << 20 // the default segment size
	recordLen = 450      // a typical audit record, newline included
)

// syncMode is one way of writing and syncing a batch.
type syncMode struct {
	name     string
	prepare  func(b *testing.B, path string) *os.File
	writeAt  bool // write at an advancing offset into a preallocated file
	datasync bool // fdatasync instead of fsync
}

var syncModes = []syncMode{
	{"append-fsync", prepareAppend, false, false}, // today's behaviour
	{"append-fdatasync", prepareAppend, false, true},
	{"fallocate-fdatasync", prepareFallocate, true, true},
	{"zerofill-fdatasync", prepareZerofill, true, true},
	{"zerofill-fsync", prepareZerofill, true, false},
}

// BenchmarkSegmentSync measures one group-commit batch: write it, then make it
// durable. Segment preparation is outside the timer; see
// BenchmarkSegmentPrepare for its cost.
func BenchmarkSegmentSync(b *testing.B) {
	for _, m := range syncModes {
		for _, n := range []int{1, 32} { // low load, and ~32 concurrent callers
			b.Run(fmt.Sprintf("%s/%dx%dB", m.name, n, recordLen), func(b *testing.B) {
				benchSync(b, m, batch(n))
			})
		}
	}
}

func benchSync(b *testing.B, m syncMode, buf []byte) {
	dir := b.TempDir()
	segs := 0
	next := func() *os.File {
		segs++
		return m.prepare(b, filepath.Join(dir, fmt.Sprintf("%08d.seg", segs)))
	}
	f := next()
	var off int64
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(int64(len(buf)))
	before := readDiskStat(b, dir)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if off+int64(len(buf)) > segSize {
			// Rotate like the segmented log will, in every mode alike, so
			// that the append modes do not measure an ever larger file.
			b.StopTimer()
			closeFile(b, f)
			f, off = next(), 0
			b.StartTimer()
		}
		start := time.Now()
		var err error
		if m.writeAt {
			_, err = f.WriteAt(buf, off)
		} else {
			_, err = f.Write(buf)
		}
		if err != nil {
			b.Fatal(err)
		}
		if m.datasync {
			err = syscall.Fdatasync(int(f.Fd()))
		} else {
			err = f.Sync()
		}
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		off += int64(len(buf))
	}
	b.StopTimer()
	// Medians and tails, because a few slow syncs on a shared disk move the
	// mean (ns/op) a lot.
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	// What the device was asked to do per batch shows why a mode costs what
	// it does: one data write, or data plus inode (and journal) blocks. The
	// counters are device-wide, so other activity on the disk leaks in.
	if after := readDiskStat(b, dir); len(before) > 6 && len(after) > 6 {
		n := float64(b.N)
		b.ReportMetric(float64(after[4]-before[4])/n, "dev-writes/op")
		b.ReportMetric(float64(after[6]-before[6])*512/1024/n, "dev-KiB/op")
		if len(after) > 15 {
			b.ReportMetric(float64(after[15]-before[15])/n, "dev-flushes/op")
		}
	}
	closeFile(b, f)
}

// BenchmarkSegmentPrepare measures creating one durable, preallocated 64 MiB
// segment, the price paid once per segment (or ahead of time, off the
// commit path) for whatever the sync benchmark shows it buys.
func BenchmarkSegmentPrepare(b *testing.B) {
	for _, p := range []struct {
		name    string
		prepare func(*testing.B, string) *os.File
	}{{"fallocate", prepareFallocate}, {"zerofill", prepareZerofill}} {
		b.Run(p.name, func(b *testing.B) {
			dir := b.TempDir()
			b.SetBytes(segSize)
			for i := 0; i < b.N; i++ {
				path := filepath.Join(dir, strconv.Itoa(i))
				closeFile(b, p.prepare(b, path))
				// Do not let b.N segments pile up on the disk.
				b.StopTimer()
				if err := os.Remove(path); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// batch is n JSON-ish records of recordLen bytes each: non-zero, so that no
// layer can mistake it for a hole, and newline-terminated like the log.
func batch(n int) []byte {
	var sb strings.Builder
	for i := range n {
		rec := fmt.Sprintf(`{"seq":%d,"action":"ExecutePlan","detail":"`, i)
		rec += strings.Repeat("x", recordLen-len(rec)-3) + "\"}\n"
		sb.WriteString(rec)
	}
	return []byte(sb.String())
}

// prepareAppend creates an empty log file as today's store opens it. Like the
// other prepares it makes the creation durable first, so that the first
// measured sync does not also pay for the new directory entry.
func prepareAppend(b *testing.B, path string) *os.File {
	f := create(b, path, os.O_APPEND)
	makeDurable(b, f)
	return f
}

// prepareFallocate reserves the segment's blocks as unwritten extents: cheap
// to create, but each first write into an extent must convert it to written,
// which is a metadata change.
func prepareFallocate(b *testing.B, path string) *os.File {
	f := create(b, path, 0)
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, segSize); err != nil {
		b.Fatal(err)
	}
	makeDurable(b, f)
	return f
}

// prepareZerofill writes real zeros over the whole segment, so that later
// writes overwrite allocated, initialised blocks and change no metadata but
// the timestamps, which fdatasync may skip.
func prepareZerofill(b *testing.B, path string) *os.File {
	f := create(b, path, 0)
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < segSize; off += int64(len(zeros)) {
		if _, err := f.WriteAt(zeros, off); err != nil {
			b.Fatal(err)
		}
	}
	makeDurable(b, f)
	return f
}

func create(b *testing.B, path string, flag int) *os.File {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|flag, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	return f
}

// makeDurable fsyncs the file and its directory, as the segmented log must
// before it may put a new segment to use.
func makeDurable(b *testing.B, f *os.File) {
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	d, err := os.Open(filepath.Dir(f.Name()))
	if err != nil {
		b.Fatal(err)
	}
	defer closeFile(b, d)
	if err := d.Sync(); err != nil {
		b.Fatal(err)
	}
}

func closeFile(b *testing.B, f *os.File) {
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// readDiskStat returns the counters of /sys/dev/block/MAJ:MIN/stat for the
// device holding dir, or nil where they cannot be read (the metrics are then
// left out).
func readDiskStat(b *testing.B, dir string) []uint64 {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		b.Fatal(err)
	}
	raw, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/stat",
		unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		return nil
	}
	var out []uint64
	for _, field := range strings.Fields(string(raw)) {
		v, err := strconv.ParseUint(field, 10, 64)
		if err != nil {
			return nil
		}
		out = append(out, v)
	}
	return out
}
