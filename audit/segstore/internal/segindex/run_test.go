package segindex

import (
	"errors"
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
	// No fence and a tiny window bisect on disk all the way; a tiny stride
	// crosses many fence posts; the defaults read a whole stride at once.
	opens := []struct {
		name           string
		stride, window uint64
	}{
		{"default", defaultFenceStride, defaultWindow},
		{"no fence", 0, 1},
		{"small fence", 4, 2},
	}
	for _, o := range opens {
		r, err := openRun(path, o.stride, o.window)
		require.NoError(t, err)
		t.Cleanup(func() { r.Close() })
		require.Equal(t, uint64(first), r.First())
		require.Equal(t, uint64(last), r.Last())
		require.Equal(t, uint64(len(all)), r.Count())
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
	all := records(1, 3000) // 12,000 entries: several fence posts
	size := fileSize(uint64(len(all)))
	flip := func(off int64, mask byte) func(t *testing.T, path string) string {
		return func(t *testing.T, path string) string {
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			b[off] ^= mask
			require.NoError(t, os.WriteFile(path, b, 0o600))
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
		{"entry key", flip(entryOffset(5), 0x01), false},
		{"entry seq", flip(entryOffset(7)+15, 0x01), false},
		{"entry offset", flip(entryOffset(9)+19, 0x01), false},
		{"fence post out of order", flip(entryOffset(defaultFenceStride), 0x80), true},
		{"checksum", flip(size-1, 0x01), false},
		{"truncated by a byte", func(t *testing.T, path string) string {
			require.NoError(t, os.Truncate(path, size-1))
			return path
		}, true},
		{"truncated by an entry", func(t *testing.T, path string) string {
			require.NoError(t, os.Truncate(path, size-entrySize))
			return path
		}, true},
		{"shorter than a header", func(t *testing.T, path string) string {
			require.NoError(t, os.Truncate(path, 10))
			return path
		}, true},
		{"renamed", func(t *testing.T, path string) string {
			to := filepath.Join(filepath.Dir(path), runName(1, 2999))
			require.NoError(t, os.Rename(path, to))
			return to
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

// TestVerifyChecksOrder writes a run whose checksum is right but whose
// entries are not sorted, as only a bug could: Verify refuses it.
func TestVerifyChecksOrder(t *testing.T) {
	t.Parallel()
	entries := []Entry{{Key: 2, Seq: 1}, {Key: 1, Seq: 2}}
	path, err := createRun(t.TempDir(), 1, 2, 2, func(emit func(Entry) error) error {
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
