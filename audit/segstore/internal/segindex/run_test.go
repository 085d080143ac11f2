package segindex

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRunLookup(t *testing.T) {
	t.Parallel()
	const first, last = 101, 1100
	all := records(first, last)
	path, err := WriteRun(t.TempDir(), first, last, slices.Clone(all))
	require.NoError(t, err)
	require.Equal(t, "00000000000000000101-00000000000000001100.idx", filepath.Base(path))

	execKey := Key(ExecutionID, "exec-100") // records 300..302
	typeKey := Key(Type, "type-2")          // every 5th record: 200 entries
	tests := []struct {
		name    string
		key     uint64
		fromSeq uint64
		limit   int
		wantLen int
	}{
		{"few hits", execKey, 0, 10, 3},
		{"few hits from the middle", execKey, 301, 10, 2},
		{"few hits limited", execKey, 0, 2, 2},
		{"largest limit", execKey, 301, math.MaxInt, 2},
		{"from past the hits", execKey, 303, 10, 0},
		{"zero limit", execKey, 0, 0, 0},
		{"many hits", typeKey, 0, 1000, 200},
		{"many hits from the middle", typeKey, 600, 1000, 100},
		{"many hits limited", typeKey, 600, 7, 7},
		{"first entry of the first key", all[0].Key, 0, 1, 1},
		{"absent key", Key(ExecutionID, "nope"), 0, 10, 0},
		{"below every key", 0, 0, 10, 0},
		{"above every key", ^uint64(0), ^uint64(0), 10, 0},
	}
	// A stride longer than the run (one fence post) and a tiny window
	// bisect on disk all the way; a tiny stride crosses many fence posts;
	// the defaults read a whole stride at once.
	opens := []struct {
		name           string
		stride, window uint64
	}{
		{"default", fenceStride, defaultWindow},
		{"one fence post", 1 << 40, 1},
		{"small fence", 4, 2},
	}
	for _, o := range opens {
		path := path
		if o.stride != fenceStride {
			path = writeStride(t, t.TempDir(), first, last, o.stride, all)
		}
		r, err := openRun(path, o.window)
		require.NoError(t, err)
		t.Cleanup(func() { r.Close() })
		require.Equal(t, uint64(first), r.First())
		require.Equal(t, uint64(last), r.Last())
		require.Equal(t, uint64(len(all)), r.Count())
		require.Len(t, r.fence, int(fenceLen(r.Count(), o.stride)))
		require.NoError(t, r.Verify())
		for _, tt := range tests {
			t.Run(o.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				got, err := r.Lookup(tt.key, tt.fromSeq, tt.limit)
				require.NoError(t, err)
				require.Len(t, got, tt.wantLen)
				require.Equal(t, want(all, tt.key, tt.fromSeq, tt.limit), got)
			})
		}
	}
}

// TestRunLookupPaging pages through every key of a run and gets back exactly
// the run's entries.
func TestRunLookupPaging(t *testing.T) {
	t.Parallel()
	all := records(1, 2000)
	r := writeOpen(t, t.TempDir(), 1, 2000, all)
	keys := map[uint64]bool{}
	for _, e := range all {
		keys[e.Key] = true
	}
	var got []Entry
	for key := range keys {
		for from := uint64(0); ; {
			page, err := r.Lookup(key, from, 37)
			require.NoError(t, err)
			got = append(got, page...)
			if len(page) < 37 {
				break
			}
			from = page[len(page)-1].Seq + 1
		}
	}
	slices.SortFunc(got, compareEntries)
	slices.SortFunc(all, compareEntries)
	require.Equal(t, all, got)
}

func TestRunEmptyAndHeavyKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	empty := writeOpen(t, dir, 1, 1, nil)
	require.NoError(t, empty.Verify())
	got, err := empty.Lookup(1, 0, 10)
	require.NoError(t, err)
	require.Empty(t, got)

	// One key on 10,000 records: the hits span several chunks of maxChunk.
	var heavy []Entry
	for seq := uint64(2); seq <= 10001; seq++ {
		heavy = append(heavy, Entry{Key: 42, Seq: seq, Offset: uint32(seq)}, Entry{Key: 43, Seq: seq})
	}
	r := writeOpen(t, dir, 2, 10001, heavy)
	got, err = r.Lookup(42, 5, 1<<20)
	require.NoError(t, err)
	require.Equal(t, want(heavy, 42, 5, 1<<20), got)
	require.Len(t, got, 9997)
}

func TestRunConcurrentLookups(t *testing.T) {
	t.Parallel()
	all := records(1, 5000)
	r := writeOpen(t, t.TempDir(), 1, 5000, all)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := g; i < 1000; i += 8 {
				key := all[i*17%len(all)].Key
				got, err := r.Lookup(key, uint64(i), 50)
				// assert, not require: FailNow must not be called off
				// the test's goroutine.
				if !assert.NoError(t, err) || !assert.Equal(t, want(all, key, uint64(i), 50), got) {
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestWriteRunRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		first, last uint64
		entries     []Entry
	}{
		{"zero first", 0, 10, nil},
		{"first after last", 11, 10, nil},
		{"seq below first", 5, 10, []Entry{{Key: 1, Seq: 4}}},
		{"seq above last", 5, 10, []Entry{{Key: 1, Seq: 5}, {Key: 1, Seq: 11}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			_, err := WriteRun(dir, tt.first, tt.last, tt.entries)
			require.Error(t, err)
			require.Empty(t, dirNames(t, dir), "no run and no temporary file left")
		})
	}
}

func TestDamagedRunIsRefused(t *testing.T) {
	t.Parallel()
	all := records(1, 3000) // 12,000 entries: 12 fence posts
	count := uint64(len(all))
	size := fileSize(count, fenceStride)
	post := func(i int64) int64 { return fenceOffset(count) + postSize*i }
	flip := func(off int64, mask byte) func(t *testing.T, path string) string {
		return func(t *testing.T, path string) string {
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			b[off] ^= mask
			require.NoError(t, os.WriteFile(path, b, 0o600))
			return path
		}
	}
	truncate := func(to int64) func(t *testing.T, path string) string {
		return func(t *testing.T, path string) string {
			require.NoError(t, os.Truncate(path, to))
			return path
		}
	}
	tests := []struct {
		name      string
		damage    func(t *testing.T, path string) string
		byOpenRun bool // else by Verify
	}{
		{"magic", flip(3, 0x01), true},
		{"first", flip(15, 0x01), true},
		{"count", flip(31, 0x01), true},
		{"stride zeroed", flip(38, 0x04), true},
		// 1025 gives as many posts as 1024 for this count: the size holds.
		{"stride", flip(39, 0x01), false},
		{"entry key", flip(entryOffset(5), 0x01), false},
		{"entry seq", flip(entryOffset(7)+15, 0x01), false},
		{"entry offset", flip(entryOffset(9)+19, 0x01), false},
		{"entry a fence post samples", flip(entryOffset(fenceStride)+7, 0x01), false},
		{"fence post key", flip(post(1)+7, 0x01), false},
		{"fence post seq", flip(post(2)+15, 0x02), false},
		{"last fence post", flip(post(11)+3, 0x10), false},
		{"fence post out of order", flip(post(1), 0x80), true},
		{"fence post seq out of range", flip(post(3)+8, 0x80), true},
		{"checksum", flip(size-1, 0x01), false},
		{"truncated by a byte", truncate(size - 1), true},
		{"truncated by a fence post", truncate(size - postSize), true},
		{"truncated by an entry", truncate(size - entrySize), true},
		{"shorter than a header", truncate(10), true},
		{"renamed", func(t *testing.T, path string) string {
			to := filepath.Join(filepath.Dir(path), runName(1, 2999))
			require.NoError(t, os.Rename(path, to))
			return to
		}, true},
		{"format version 1", func(t *testing.T, path string) string {
			require.NoError(t, os.Remove(path))
			return writeV1(t, filepath.Dir(path), 1, 3000, all)
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path, err := WriteRun(t.TempDir(), 1, 3000, slices.Clone(all))
			require.NoError(t, err)
			path = tt.damage(t, path)
			r, err := OpenRun(path)
			if tt.byOpenRun {
				require.ErrorIs(t, err, ErrCorrupt)
				return
			}
			require.NoError(t, err)
			defer r.Close()
			require.ErrorIs(t, r.Verify(), ErrCorrupt)
		})
	}
}

// TestLookupChecksFence damages a fence post so that OpenRun cannot tell
// (still in order and in range), moving it just below or just above the
// entry it samples. Below, the fence would place that entry in the stride
// after it and a lookup of it would miss it; above, in the right stride.
// Either way Lookup finds the disagreement when it reads the entry, while
// lookups that do not rely on the post go on working.
func TestLookupChecksFence(t *testing.T) {
	t.Parallel()
	all := records(1, 3000)
	slices.SortFunc(all, compareEntries)
	sampled := all[5*fenceStride]
	other := all[8*fenceStride+100]
	for _, delta := range []int{-1, +1} {
		t.Run(fmt.Sprint(delta), func(t *testing.T) {
			t.Parallel()
			path, err := WriteRun(t.TempDir(), 1, 3000, slices.Clone(all))
			require.NoError(t, err)
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			require.NoError(t, err)
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(int64(sampled.Key)+int64(delta)))
			_, err = f.WriteAt(b[:], fenceOffset(uint64(len(all)))+5*postSize)
			require.NoError(t, err)
			require.NoError(t, f.Close())

			r, err := OpenRun(path)
			require.NoError(t, err)
			defer r.Close()
			_, err = r.Lookup(sampled.Key, sampled.Seq, 10)
			require.ErrorIs(t, err, ErrCorrupt)
			got, err := r.Lookup(other.Key, other.Seq, 10)
			require.NoError(t, err)
			require.Equal(t, want(all, other.Key, other.Seq, 10), got)
			require.ErrorIs(t, r.Verify(), ErrCorrupt)
		})
	}
}

// TestVerifyChecksOrder writes a run whose checksum is right but whose
// entries are not sorted, as only a bug could: Verify refuses it.
func TestVerifyChecksOrder(t *testing.T) {
	t.Parallel()
	entries := []Entry{{Key: 2, Seq: 1}, {Key: 1, Seq: 2}}
	path, err := createRun(t.TempDir(), 1, 2, 2, fenceStride, func(emit func(Entry) error) error {
		for _, e := range entries {
			if err := emit(e); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	r, err := OpenRun(path)
	require.NoError(t, err)
	defer r.Close()
	err = r.Verify()
	require.ErrorIs(t, err, ErrCorrupt)
	require.False(t, errors.Is(err, os.ErrNotExist))
}

// TestVerifyChecksFence writes a run whose checksum is right but whose
// fence does not sample its entries, as only a bug could: OpenRun cannot
// tell (the posts are in order and in range), Verify and MergeRuns refuse it.
func TestVerifyChecksFence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	all := records(1, 1000) // 4000 entries: 4 fence posts
	path, err := WriteRun(dir, 1, 1000, slices.Clone(all))
	require.NoError(t, err)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	// Post 2 takes the seq of the entry after the one it samples.
	slices.SortFunc(all, compareEntries)
	off := fenceOffset(uint64(len(all))) + 2*postSize
	putPost(b[off:], fencePost{all[2*fenceStride].Key, all[2*fenceStride+1].Seq})
	body := len(b) - sumSize
	sum := sha256.Sum256(b[:body])
	copy(b[body:], sum[:])
	require.NoError(t, os.WriteFile(path, b, 0o600))

	r, err := OpenRun(path)
	require.NoError(t, err)
	defer r.Close()
	require.ErrorIs(t, r.Verify(), ErrCorrupt)
	out := t.TempDir()
	_, err = MergeRuns(out, []*Run{r})
	require.ErrorIs(t, err, ErrCorrupt)
	require.Empty(t, dirNames(t, out))
}
