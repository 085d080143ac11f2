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
