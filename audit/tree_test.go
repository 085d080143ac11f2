package audit

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"
)

// hashStore is every stored hash, kept by tlog itself: the reference the
// edge-only computation must match.
type hashStore []tlog.Hash

func (s hashStore) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		out[i] = s[x]
	}
	return out, nil
}

// TestTreeEdgeMatchesTlog grows a tree leaf by leaf from its edge alone and
// checks every stored hash, root and edge against tlog's own computation
// over all stored hashes, and that a restart from the edge continues it.
func TestTreeEdgeMatchesTlog(t *testing.T) {
	t.Parallel()
	var all hashStore
	e, err := newTreeEdge(0, nil)
	require.NoError(t, err)
	for n := range int64(300) {
		line := fmt.Appendf(nil, `{"sequence":%d}`, n+1)
		want, err := tlog.StoredHashes(n, line, all)
		require.NoError(t, err)
		got, err := e.add(line)
		require.NoError(t, err)
		require.Equal(t, want, got, "stored hashes of leaf %d", n)
		all = append(all, want...)

		wantRoot, err := tlog.TreeHash(n+1, all)
		require.NoError(t, err)
		root, err := e.root()
		require.NoError(t, err)
		require.Equal(t, wantRoot, root, "root of size %d", n+1)

		edge := e.edge()
		require.Len(t, edge, edgeLen(n+1))
		for i, x := range EdgeIndexes(n + 1) {
			require.Equal(t, all[x], edge[i])
		}
		// A store that kept only the edge resumes the same tree.
		e, err = newTreeEdge(n+1, edge)
		require.NoError(t, err)
	}
	_, err = newTreeEdge(5, nil)
	require.Error(t, err, "an edge of the wrong length is refused")
}

// zeroReader answers every stored hash with zeros: proof sizes depend only
// on the tree sizes involved, not on the hashes.
var zeroReader = tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
	return make([]tlog.Hash, len(indexes)), nil
})

// TestProofSizesAtOneMillion bounds the proofs of a log of a million
// records: an inclusion proof holds at most ceil(log2 1e6) = 20 hashes
// (640 bytes), a consistency proof at most twice that.
func TestProofSizesAtOneMillion(t *testing.T) {
	t.Parallel()
	const size = 1_000_000
	maxRecord, maxTree := 0, 0
	for _, n := range []int64{0, 1, 2, 524_287, 524_288, 777_777, size - 2, size - 1} {
		p, err := tlog.ProveRecord(size, n, zeroReader)
		require.NoError(t, err)
		require.LessOrEqual(t, len(p), 20, "inclusion proof of leaf %d", n)
		maxRecord = max(maxRecord, len(p))
	}
	for _, n := range []int64{1, 2, 3, 1000, 524_287, 524_288, 999_000, size - 1, size} {
		p, err := tlog.ProveTree(size, n, zeroReader)
		require.NoError(t, err)
		require.LessOrEqual(t, len(p), 40, "consistency proof from %d", n)
		maxTree = max(maxTree, len(p))
	}
	t.Logf("tree of %d records: inclusion proofs up to %d hashes (%d bytes), consistency proofs up to %d hashes (%d bytes)",
		size, maxRecord, maxRecord*tlog.HashSize, maxTree, maxTree*tlog.HashSize)
}

// BenchmarkMillionLeafTree builds a tree of a million 600-byte records with
// the edge code alone, keeping every stored hash as a store would, and
// checks proofs from it with tlog: the root matches tlog's TreeHash over
// those hashes, and inclusion and consistency proofs verify. It reports
// the proof sizes.
func BenchmarkMillionLeafTree(b *testing.B) {
	const size = 1_000_000
	line := make([]byte, 600)
	for range b.N {
		tb, err := NewTreeBuilder(0, nil)
		require.NoError(b, err)
		all := make(hashStore, 0, 2*size)
		for i := range size {
			copy(line, fmt.Sprintf(`{"sequence":%07d`, i+1)) // fixed width: line is reused
			hashes, err := tb.Add(line)
			require.NoError(b, err)
			all = append(all, hashes...)
		}
		root, err := tb.Root()
		require.NoError(b, err)
		want, err := tlog.TreeHash(size, all)
		require.NoError(b, err)
		require.Equal(b, want, root)

		var incl, cons int
		for _, n := range []int64{0, 524_288, size - 1} {
			p, err := tlog.ProveRecord(size, n, all)
			require.NoError(b, err)
			copy(line, fmt.Sprintf(`{"sequence":%07d`, n+1))
			require.NoError(b, tlog.CheckRecord(p, size, root, n, tlog.RecordHash(line)))
			incl = max(incl, len(p))
		}
		old, err := tlog.TreeHash(777_777, all)
		require.NoError(b, err)
		p, err := tlog.ProveTree(size, 777_777, all)
		require.NoError(b, err)
		require.NoError(b, tlog.CheckTree(p, size, root, 777_777, old))
		cons = len(p)
		b.ReportMetric(float64(incl*tlog.HashSize), "inclusion-proof-bytes")
		b.ReportMetric(float64(cons*tlog.HashSize), "consistency-proof-bytes")
		b.ReportMetric(float64(len(all)*tlog.HashSize)/size, "stored-bytes/record")
	}
}

// BenchmarkTreeAdd is the tree's CPU cost per record: the leaf hash of a
// 600-byte record and the subtrees it completes, from the edge alone.
func BenchmarkTreeAdd(b *testing.B) {
	line := make([]byte, 600)
	tb, err := NewTreeBuilder(0, nil)
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tb.Add(line); err != nil {
			b.Fatal(err)
		}
	}
}
