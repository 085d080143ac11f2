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
// of the tree (Head.Tree) alone, without reading the store. The edge of a
// tree of size n is one complete subtree per set bit of n; nodes[level]
// holds the hash of the subtree of 2^level leaves when that bit is set.
type treeEdge struct {
	size  int64
	nodes [64]tlog.Hash
}

func newTreeEdge(size int64, edge []tlog.Hash) (*treeEdge, error) {
	e := &treeEdge{}
	return e, e.reset(size, edge)
}

// reset makes e the edge of a tree of size leaves, so that the log's
// writer reuses one treeEdge (2 KiB) for every batch.
func (e *treeEdge) reset(size int64, edge []tlog.Hash) error {
	if size < 0 {
		return fmt.Errorf("tree of negative size %d", size)
	}
	if want := edgeLen(size); len(edge) != want {
		return fmt.Errorf("tree edge of size %d has %d hashes, want %d", size, len(edge), want)
	}
	e.size = size
	clear(e.nodes[:])
	i := 0
	for level := 63; level >= 0; level-- {
		if size&(1<<level) != 0 {
			e.nodes[level] = edge[i]
			i++
		}
	}
	return nil
}

// ReadHashes implements tlog.HashReader over the edge: tlog asks only for
// complete subtrees to the left of the next leaf, which the edge holds.
func (e *treeEdge) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		level, n := tlog.SplitStoredHashIndex(x)
		if e.size&(1<<level) == 0 || n != e.size>>level-1 {
			return nil, fmt.Errorf("tree hash %d is not on the edge of a tree of size %d", x, e.size)
		}
		out[i] = e.nodes[level]
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
	e.advance(hashes)
	return hashes, nil
}

// advance moves the edge past the next leaf, given the stored hashes that
// leaf adds (as add computed them, or as a store got them): hashes[k] is
// the subtree of 2^k leaves that the leaf completes, the last one the new
// edge's smallest subtree, into which the subtrees below it merged.
func (e *treeEdge) advance(hashes []tlog.Hash) {
	top := len(hashes) - 1
	e.nodes[top] = hashes[top]
	clear(e.nodes[:top])
	e.size++
}

// edge returns the edge's hashes, largest subtree first.
func (e *treeEdge) edge() []tlog.Hash {
	if e.size == 0 {
		return nil // as an empty Head's
	}
	out := make([]tlog.Hash, 0, edgeLen(e.size))
	for level := 63; level >= 0; level-- {
		if e.size&(1<<level) != 0 {
			out = append(out, e.nodes[level])
		}
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

// TreeBuilder grows a log's Merkle tree leaf by leaf from its right edge
// alone, in constant memory: stores use it to recompute the stored hashes
// of records their tree lost, verifiers to rehash a log without trusting
// any stored hash.
type TreeBuilder struct{ e *treeEdge }

// NewTreeBuilder continues the tree of size leaves whose right edge is
// edge (as Head.Tree); NewTreeBuilder(0, nil) starts an empty tree.
func NewTreeBuilder(size uint64, edge []tlog.Hash) (*TreeBuilder, error) {
	e, err := newTreeEdge(int64(size), edge)
	if err != nil {
		return nil, err
	}
	return &TreeBuilder{e: e}, nil
}

// Add adds the record line (without its newline) as the next leaf and
// returns the stored hashes it adds, at stored indexes from
// tlog.StoredHashCount(size before the call).
func (b *TreeBuilder) Add(line []byte) ([]tlog.Hash, error) { return b.e.add(line) }

// Size is the number of leaves.
func (b *TreeBuilder) Size() uint64 { return uint64(b.e.size) }

// Edge is the tree's right edge, largest subtree first (as Head.Tree).
func (b *TreeBuilder) Edge() []tlog.Hash { return b.e.edge() }

// Root is the tree's root hash.
func (b *TreeBuilder) Root() (tlog.Hash, error) { return b.e.root() }

// NextTree returns the right edge of the tree after recs, a batch that
// follows head (as a Store's build returned it), and checks that each
// record carries exactly the stored hashes its leaf adds. A store calls it
// to keep the new edge with the batch, so that its next head resumes the
// tree without reading any stored hash.
func NextTree(head Head, recs []Record) ([]tlog.Hash, error) {
	var e treeEdge // on the stack: it is never a HashReader here
	if err := e.reset(int64(head.Sequence), head.Tree); err != nil {
		return nil, err
	}
	for i := range recs {
		r := &recs[i]
		if r.Sequence != uint64(e.size)+1 {
			return nil, fmt.Errorf("record %d of the batch has sequence %d, want %d", i, r.Sequence, e.size+1)
		}
		// Leaf n adds its leaf hash and one hash per trailing 1 bit of n.
		if want := 1 + bits.TrailingZeros64(^uint64(e.size)); len(r.TreeHashes) != want {
			return nil, fmt.Errorf("record %d carries %d tree hashes, want %d", r.Sequence, len(r.TreeHashes), want)
		}
		e.advance(r.TreeHashes)
	}
	return e.edge(), nil
}
