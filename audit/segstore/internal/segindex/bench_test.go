package segindex

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

func BenchmarkKey(b *testing.B) {
	const id = "0b7e2f4c-9a51-4d3e-8f60-1c2d3e4f5a6b" // a UUID, as execution IDs are
	var sink uint64
	for b.Loop() {
		sink += Key(ExecutionID, id)
	}
	_ = sink
}

// BenchmarkMemAdd adds one record's 4 entries per op, to a Mem replaced
// every 250,000 records as a sealed segment's would be, alone and with
// readers looking up at the same time.
func BenchmarkMemAdd(b *testing.B) {
	const perSegment = 250_000
	all := records(1, perSegment)
	for _, readers := range []int{0, 1} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			var m atomic.Pointer[Mem]
			m.Store(&Mem{})
			var stop atomic.Bool
			var wg sync.WaitGroup
			for range readers {
				wg.Go(func() {
					for i := 0; !stop.Load(); i++ {
						m.Load().Lookup(all[i*4%len(all)].Key, 0, 10)
					}
				})
			}
			i := 0
			for b.Loop() {
				if i == len(all) {
					m.Store(&Mem{})
					i = 0
				}
				if err := m.Load().Add(all[i : i+4]...); err != nil {
					b.Fatal(err)
				}
				i += 4
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(4*b.N), "ns/entry")
			stop.Store(true)
			wg.Wait()
		})
	}
}

// BenchmarkRunLookup looks up, in one run of 1M and 10M entries: an
// execution key with 3 entries, an absent key, and a page of 100 of a type
// key's hundreds of thousands of entries. It compares the fence OpenRun uses
// with none (bisection on disk from the whole file) and with reading a
// whole stride at once. The file is in the page cache: the figures are the
// CPU and system-call cost, not the disk's.
func BenchmarkRunLookup(b *testing.B) {
	for _, n := range []uint64{1_000_000, 10_000_000} {
		b.Run(fmt.Sprintf("entries=%dM", n/1_000_000), func(b *testing.B) {
			last := n / 4
			path, err := WriteRun(b.TempDir(), 1, last, records(1, last))
			if err != nil {
				b.Fatal(err)
			}
			b.Run("open", func(b *testing.B) {
				for b.Loop() {
					r, err := OpenRun(path)
					if err != nil {
						b.Fatal(err)
					}
					r.Close()
				}
			})
			// The fence (every fenceStride-th entry) is in the file; the
			// window is how many entries a lookup reads at once.
			configs := []struct {
				name   string
				window uint64
			}{
				{"window=128", defaultWindow},
				{"window=1024", fenceStride},
			}
			rng := rand.New(rand.NewPCG(1, 2))
			for _, c := range configs {
				r, err := openRun(path, c.window)
				if err != nil {
					b.Fatal(err)
				}
				defer r.Close()
				lookups := []struct {
					name   string
					key    func() (key, fromSeq uint64)
					limit  int
					expect func(int) bool
				}{
					{"present", func() (uint64, uint64) {
						return Key(ExecutionID, fmt.Sprintf("exec-%d", 1+rng.Uint64N(last/3-1))), 0
					}, 100, func(n int) bool { return n == 3 }},
					{"absent", func() (uint64, uint64) { return rng.Uint64(), 0 }, 100, func(n int) bool { return n == 0 }},
					{"page of a type", func() (uint64, uint64) {
						return Key(Type, "type-3"), rng.Uint64N(last / 2)
					}, 100, func(n int) bool { return n == 100 }},
				}
				for _, l := range lookups {
					// Keys are made before timing: Key and Sprintf are
					// not what this measures.
					keys := make([][2]uint64, 1024)
					for i := range keys {
						keys[i][0], keys[i][1] = l.key()
					}
					b.Run(c.name+"/"+l.name, func(b *testing.B) {
						i := 0
						for b.Loop() {
							k := keys[i%len(keys)]
							i++
							got, err := r.Lookup(k[0], k[1], l.limit)
							if err != nil || !l.expect(len(got)) {
								b.Fatalf("lookup: %d entries, %v", len(got), err)
							}
						}
					})
				}
			}
		})
	}
}

// BenchmarkWriteRun writes a 1M-entry run (20 MB) with fsync, from entries
// sorted as Mem.Entries returns them and from shuffled ones.
func BenchmarkWriteRun(b *testing.B) {
	const last = 250_000
	sorted := records(1, last)
	slices.SortFunc(sorted, compareEntries)
	shuffled := slices.Clone(sorted)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) {
		shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
	})
	for _, in := range []struct {
		name    string
		entries []Entry
	}{{"sorted", sorted}, {"shuffled", shuffled}} {
		b.Run(in.name, func(b *testing.B) {
			dir := b.TempDir()
			buf := make([]Entry, len(in.entries))
			b.SetBytes(fileSize(uint64(len(buf)), fenceStride))
			for b.Loop() {
				b.StopTimer()
				copy(buf, in.entries)
				b.StartTimer()
				if _, err := WriteRun(dir, 1, last, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(buf)), "ns/entry")
		})
	}
}

// BenchmarkMergeRuns merges 1M entries from 2 and from 8 runs, checking the
// inputs' checksums as it goes, with fsync.
func BenchmarkMergeRuns(b *testing.B) {
	const last = 250_000
	for _, k := range []uint64{2, 8} {
		b.Run(fmt.Sprintf("runs=%d", k), func(b *testing.B) {
			dir := b.TempDir()
			var runs []*Run
			for i := range k {
				first, end := 1+i*last/k, (i+1)*last/k
				runs = append(runs, writeOpen(b, dir, first, end, records(first, end)))
			}
			out := b.TempDir()
			b.SetBytes(fileSize(4*last, fenceStride))
			for b.Loop() {
				if _, err := MergeRuns(out, runs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*4*last), "ns/entry")
		})
	}
}

// BenchmarkVerify reads and checks a 1M-entry run, as the store does for a
// run it adopts at start-up.
func BenchmarkVerify(b *testing.B) {
	r := writeOpen(b, b.TempDir(), 1, 250_000, records(1, 250_000))
	b.SetBytes(fileSize(r.Count(), fenceStride))
	for b.Loop() {
		if err := r.Verify(); err != nil {
			b.Fatal(err)
		}
	}
}
