package segindex

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMem(t *testing.T) {
	t.Parallel()
	var m Mem
	require.Empty(t, m.Lookup(1, 0, 10), "the zero Mem is empty")
	require.Empty(t, m.Entries())

	all := records(1, 3000) // enough keys to grow the table several times
	for i := 0; i < len(all); i += 4 {
		require.NoError(t, m.Add(all[i:i+4]...))
	}
	execKey := Key(ExecutionID, "exec-100")
	typeKey := Key(Type, "type-2")
	tests := []struct {
		name    string
		key     uint64
		fromSeq uint64
		limit   int
		wantLen int
	}{
		{"few hits", execKey, 0, 10, 3},
		{"few hits from the middle", execKey, 301, 10, 2},
		{"few hits limited", execKey, 0, 1, 1},
		{"largest limit", execKey, 301, math.MaxInt, 2},
		{"from past the hits", execKey, 303, 10, 0},
		{"zero limit", execKey, 0, 0, 0},
		{"many hits", typeKey, 0, 1000, 600},
		{"many hits from the middle", typeKey, 2000, 1000, 200},
		{"absent key", Key(ExecutionID, "nope"), 0, 10, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := m.Lookup(tt.key, tt.fromSeq, tt.limit)
			require.Len(t, got, tt.wantLen)
			require.Equal(t, want(all, tt.key, tt.fromSeq, tt.limit), got)
		})
	}

	t.Run("entries are sorted as a run", func(t *testing.T) {
		t.Parallel()
		sorted := slices.Clone(all)
		slices.SortFunc(sorted, compareEntries)
		require.Equal(t, sorted, m.Entries())
	})
}

func TestMemAddRefusesGoingBack(t *testing.T) {
	t.Parallel()
	var m Mem
	require.NoError(t, m.Add(Entry{Key: 1, Seq: 5}))
	require.NoError(t, m.Add(Entry{Key: 2, Seq: 5}), "a record's entries may come in several calls")
	require.Error(t, m.Add(Entry{Key: 3, Seq: 6}, Entry{Key: 4, Seq: 4}))
	require.Empty(t, m.Lookup(3, 0, 10), "a refused Add adds nothing")
	require.Error(t, m.Add(Entry{Key: 1, Seq: 4}))
	require.NoError(t, m.Add(Entry{Key: 1, Seq: 6}))
	require.Equal(t, []Entry{{Key: 1, Seq: 5}, {Key: 1, Seq: 6}}, m.Lookup(1, 0, 10))
}

// TestMemConcurrent has readers look up and snapshot while the writer adds:
// under -race this checks the publication, and every answer must be a
// prefix of the final one that never shrinks.
func TestMemConcurrent(t *testing.T) {
	t.Parallel()
	var m Mem
	all := records(1, 20000)
	keys := []uint64{Key(ExecutionID, "exec-1000"), Key(PlanID, "plan-7"), Key(UserID, "user-3"), Key(Type, "type-0")}
	var done atomic.Bool
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			key := keys[g]
			final := want(all, key, 0, len(all))
			seen := 0
			// assert, not require: FailNow must not be called off the
			// test's goroutine.
			for !done.Load() {
				got := m.Lookup(key, 0, len(all))
				if !assert.GreaterOrEqual(t, len(got), seen) ||
					len(got) > 0 && !assert.Equal(t, final[:len(got)], got) ||
					!assert.True(t, slices.IsSortedFunc(m.Entries(), compareEntries)) {
					return
				}
				seen = len(got)
			}
			assert.Equal(t, final, m.Lookup(key, 0, len(all)))
		})
	}
	for i := 0; i < len(all); i += 4 {
		require.NoError(t, m.Add(all[i:i+4]...))
	}
	done.Store(true)
	wg.Wait()
}

// TestMemFarFromTheStart: a Mem of a segment that starts deep in the log
// (its postings keep sequences relative to the first one) answers with
// the log's sequences, from any fromSeq, and refuses a sequence too far
// from its first for 32 bits.
func TestMemFarFromTheStart(t *testing.T) {
	t.Parallel()
	const first = 5_000_000_000
	var m Mem
	k := Key(ExecutionID, "x")
	require.NoError(t, m.Add(Entry{Key: k, Seq: first, Offset: 0}, Entry{Key: k, Seq: first + 7, Offset: 100}))
	for _, tc := range []struct {
		from uint64
		want []uint64
	}{{0, []uint64{first, first + 7}}, {first, []uint64{first, first + 7}}, {first + 1, []uint64{first + 7}}, {first + 8, nil}} {
		var got []uint64
		for _, e := range m.Lookup(k, tc.from, 10) {
			got = append(got, e.Seq)
		}
		require.Equal(t, tc.want, got, "from %d", tc.from)
	}
	require.Equal(t, []Entry{{Key: k, Seq: first}, {Key: k, Seq: first + 7, Offset: 100}}, m.Entries())
	require.Error(t, m.Add(Entry{Key: k, Seq: first + 1<<32}))
}
