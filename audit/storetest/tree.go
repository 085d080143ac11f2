package storetest

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// hashList holds every stored hash of a tree, as tlog itself computes
// them from the records' bytes: the reference that a store's hashes and
// edges must match, independent of the edge-only code that made them.
type hashList []tlog.Hash

func (l hashList) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x >= int64(len(l)) {
			return nil, fmt.Errorf("no stored hash %d", x)
		}
		out[i] = l[x]
	}
	return out, nil
}

// referenceHashes computes every stored hash of the tree over recs (a log
// from sequence 1) with tlog alone.
func referenceHashes(t *testing.T, recs []audit.Record) hashList {
	t.Helper()
	var all hashList
	for i := range recs {
		hashes, err := tlog.StoredHashes(int64(i), recs[i].Line, all)
		require.NoError(t, err)
		all = append(all, hashes...)
	}
	return all
}

// headAfter is the head a store must report after recs, a log from
// sequence 1, with the tree edge computed by tlog.
func headAfter(t *testing.T, recs []audit.Record) audit.Head {
	t.Helper()
	if len(recs) == 0 {
		return audit.Head{}
	}
	all := referenceHashes(t, recs)
	last := recs[len(recs)-1]
	edge, err := all.ReadHashes(audit.EdgeIndexes(int64(last.Sequence)))
	require.NoError(t, err)
	return audit.Head{Sequence: last.Sequence, Hash: last.Hash, Tree: edge}
}

// allIndexes are the stored indexes of a tree of n records.
func allIndexes(n int) []int64 {
	idx := make([]int64, tlog.StoredHashCount(int64(n)))
	for i := range idx {
		idx[i] = int64(i)
	}
	return idx
}

// testTreeSurvivesRestart: every record carries the stored hashes tlog
// computes for it, the store reads them back and reports the edge in its
// heads, across restarts, and the tree goes on where it was.
func testTreeSurvivesRestart(t *testing.T, h Harness) {
	s := openStore(t, h)
	var all []audit.Record
	appendBatches := func(sizes ...int) {
		for i, size := range sizes {
			var evs []audit.Event
			for j := range size {
				evs = append(evs, event(received, fmt.Sprintf("exec-%d-%d-%d", len(all), i, j), "plan", "user"))
			}
			all = append(all, appendEvents(t, s, true, evs...)...)
		}
	}
	check := func(what string) {
		want := referenceHashes(t, all)
		var got hashList
		for i := range all {
			got = append(got, all[i].TreeHashes...)
		}
		require.Equal(t, want, got, "%s: the records' tree hashes", what)
		stored, err := s.ReadHashes(ctx(t), allIndexes(len(all)))
		require.NoError(t, err)
		require.Equal(t, []tlog.Hash(want), stored, "%s: ReadHashes", what)
		require.Equal(t, headAfter(t, all), headOf(t, s), "%s: the head", what)
		durable, err := s.DurableHead(ctx(t))
		require.NoError(t, err)
		require.Equal(t, headAfter(t, all), durable, "%s: the durable head", what)
	}
	appendBatches(1, 3, 2, 7, 1, 16)
	check("before the restart")
	s = restart(t, s, h)
	check("after the restart")
	appendBatches(5, 1, 30)
	check("after appending on the restarted store")
	s = restart(t, s, h)
	check("after a second restart")
}

// testReadHashesBeyondTree: a hash the tree does not hold is an error,
// never a zero hash that a proof would carry.
func testReadHashesBeyondTree(t *testing.T, h Harness) {
	s := openStore(t, h)
	appendEvents(t, s, true, event(received, "a", "p", "u"), event(failed, "a", "p", "u"))
	_, err := s.ReadHashes(ctx(t), []int64{0, tlog.StoredHashCount(2)})
	require.Error(t, err)
	got, err := s.ReadHashes(ctx(t), []int64{2, 0})
	require.NoError(t, err, "hashes in any order")
	require.Len(t, got, 2)
}

// testDurableHead: after a durable append the durable head is the head.
func testDurableHead(t *testing.T, h Harness) {
	s := openStore(t, h)
	empty, err := s.DurableHead(ctx(t))
	require.NoError(t, err)
	require.Equal(t, audit.Head{}, empty)
	recs := appendEvents(t, s, false, event(received, "a", "p", "u"))
	recs = append(recs, appendEvents(t, s, true, event(started, "a", "p", "u"))...)
	got, err := s.DurableHead(ctx(t))
	require.NoError(t, err)
	require.Equal(t, headAfter(t, recs), got)
}

// testCheckpointIsKept: the latest checkpoint survives a restart, and
// one for a smaller tree (another replica's, late) never replaces it.
func testCheckpointIsKept(t *testing.T, h Harness) {
	s := openStore(t, h)
	_, err := s.LoadCheckpoint(ctx(t))
	require.ErrorIs(t, err, audit.ErrNoCheckpoint)
	// The store keeps the note as it is; these are well-formed checkpoints
	// whose signature block is not checked by the store.
	cp := func(size uint64) []byte {
		return []byte(audit.FormatCheckpoint("example.com/log", audit.TreeHead{Size: size}) + "\n\u2014 example.com/log AAAAAA==\n")
	}
	require.NoError(t, s.SaveCheckpoint(ctx(t), 5, cp(5)))
	got, err := s.LoadCheckpoint(ctx(t))
	require.NoError(t, err)
	require.Equal(t, cp(5), got)
	require.NoError(t, s.SaveCheckpoint(ctx(t), 4, cp(4)))
	s = restart(t, s, h)
	got, err = s.LoadCheckpoint(ctx(t))
	require.NoError(t, err)
	require.Equal(t, cp(5), got, "a smaller tree's checkpoint is not kept")
	require.NoError(t, s.SaveCheckpoint(ctx(t), 7, cp(7)))
	got, err = s.LoadCheckpoint(ctx(t))
	require.NoError(t, err)
	require.Equal(t, cp(7), got)
}
