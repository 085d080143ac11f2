package audit

import (
	"fmt"
	"math/bits"

	"golang.org/x/mod/sumdb/tlog"
)

// The audit log is also an RFC 6962 Merkle tree (the tree of Certificate
// Transparency and the Go checksum database): leaf i is the record of
// sequence i+1, its leaf hash SHA-256(0x00 || the record's bytes). Stores
// keep the tree's stored hashes in golang.org/x/mod/sumdb/tlog's layout
// next to the records, written in the same group commit, so that proofs
// and checkpoints never rehash the log.

// LeafHash is the Merkle leaf hash of a record's bytes (the line without
// its newline).
func LeafHash(line []byte) tlog.Hash { return tlog.RecordHash(line) }

// treeEdge computes the stored hashes of new records from the right edge
// of the tree (Head.Tree) alone, without reading the store.
type treeEdge struct {
	size  int64
	nodes map[int64]tlog.Hash // stored index -> hash, the edge's nodes
}

func newTreeEdge(size int64, edge []tlog.Hash) (*treeEdge, error) {
	idx := edgeIndexes(size)
	if len(idx) != len(edge) {
		return nil, fmt.Errorf("tree edge of size %d has %d hashes, want %d", size, len(edge), len(idx))
	}
	e := &treeEdge{size: size, nodes: make(map[int64]tlog.Hash, len(idx)+8)}
	for i, x := range idx {
		e.nodes[x] = edge[i]
	}
	return e, nil
}

// ReadHashes implements tlog.HashReader over the edge: tlog asks only for
// complete subtrees to the left of the next leaf, which the edge holds.
func (e *treeEdge) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := e.nodes[x]
		if !ok {
			return nil, fmt.Errorf("tree hash %d is not on the edge of a tree of size %d", x, e.size)
		}
		out[i] = h
	}
	return out, nil
}

// add appends a leaf and returns the stored hashes it adds, in stored
// index order from tlog.StoredHashCount(size).
func (e *treeEdge) add(line []byte) ([]tlog.Hash, error) {
	hashes, err := tlog.StoredHashes(e.size, line, e)
	if err != nil {
		return nil, err
	}
	first := tlog.StoredHashCount(e.size)
	for i, h := range hashes {
		e.nodes[first+int64(i)] = h
	}
	e.size++
	// Keep only what the next leaf may need.
	keep := edgeIndexes(e.size)
	next := make(map[int64]tlog.Hash, len(keep)+8)
	for _, x := range keep {
		next[x] = e.nodes[x]
	}
	e.nodes = next
	return hashes, nil
}

// edge returns the edge's hashes, largest subtree first.
func (e *treeEdge) edge() []tlog.Hash {
	idx := edgeIndexes(e.size)
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		out[i] = e.nodes[x]
	}
	return out
}

// root is the tree hash of the edge's tree.
func (e *treeEdge) root() (tlog.Hash, error) { return tlog.TreeHash(e.size, e) }

// edgeIndexes are the stored indexes of the complete subtrees of a tree of
// size leaves, largest first: one per set bit of size.
func edgeIndexes(size int64) []int64 {
	var idx []int64
	for level := 63; level >= 0; level-- {
		if size&(1<<level) == 0 {
			continue
		}
		idx = append(idx, tlog.StoredHashIndex(level, size>>level-1))
	}
	return idx
}

// EdgeIndexes are the stored indexes of the right edge of a tree of size
// leaves (Head.Tree's hashes), largest subtree first: what a store reads
// back at start to resume the tree without rehashing the log.
func EdgeIndexes(size int64) []int64 { return edgeIndexes(size) }

// TreeRoot returns the root hash of a tree of size leaves from its right
// edge (Head.Tree).
func TreeRoot(size int64, edge []tlog.Hash) (tlog.Hash, error) {
	e, err := newTreeEdge(size, edge)
	if err != nil {
		return tlog.Hash{}, err
	}
	return e.root()
}

// edgeLen is the number of hashes on the edge of a tree of size leaves.
func edgeLen(size int64) int { return bits.OnesCount64(uint64(size)) }
