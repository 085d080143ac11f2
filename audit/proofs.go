package audit

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// Proofs are read from the store's stored hashes (a tree file, a column),
// which can be damaged or changed without the records: one flipped hash
// makes proofs that fail at the auditor's end, who would then blame the
// records. So every proof is checked here, before it is returned, against
// the root of its tree, and that root against the durable tree's, whose
// root comes from the store's head (computed from the records), not from
// the stored hashes: a proof that does not check is never handed out, and
// the log halts on it.

// ProveRecord returns the leaf hash of record seq and its inclusion proof
// in the tree of size records, size at most the durable tree's (durable,
// as Tree returned it).
func (l *Log) ProveRecord(ctx context.Context, seq, size uint64, durable TreeHead) (tlog.Hash, tlog.RecordProof, error) {
	if seq == 0 || seq > size || size > durable.Size {
		return tlog.Hash{}, nil, fmt.Errorf("prove record %d in a tree of %d (durable %d): out of range", seq, size, durable.Size)
	}
	r := l.hashReader(ctx)
	root, err := l.rootOf(ctx, size, durable)
	if err != nil {
		return tlog.Hash{}, nil, err
	}
	proof, err := tlog.ProveRecord(int64(size), int64(seq-1), r)
	if err != nil {
		return tlog.Hash{}, nil, l.proofFailed(fmt.Errorf("prove inclusion: %w", err))
	}
	leaf, err := l.ReadHashes(ctx, []int64{tlog.StoredHashIndex(0, int64(seq-1))})
	if err != nil {
		return tlog.Hash{}, nil, l.proofFailed(fmt.Errorf("read leaf hash: %w", err))
	}
	if err := tlog.CheckRecord(proof, int64(size), root, int64(seq-1), leaf[0]); err != nil {
		return tlog.Hash{}, nil, l.proofFailed(fmt.Errorf("%w: the inclusion proof of record %d in the tree of %d records, read from the stored tree hashes, does not lead to the tree's root: stored tree hashes were changed",
			ErrIntegrity, seq, size))
	}
	return leaf[0], proof, nil
}

// ProveTree returns the proof that the tree of second records extends that
// of first, 0 < first <= second <= durable.Size.
func (l *Log) ProveTree(ctx context.Context, first, second uint64, durable TreeHead) (tlog.TreeProof, error) {
	if first == 0 || first > second || second > durable.Size {
		return nil, fmt.Errorf("prove tree %d to %d (durable %d): out of range", first, second, durable.Size)
	}
	rootSecond, err := l.rootOf(ctx, second, durable)
	if err != nil {
		return nil, err
	}
	rootFirst, err := tlog.TreeHash(int64(first), l.hashReader(ctx))
	if err != nil {
		return nil, l.proofFailed(fmt.Errorf("tree hash of %d records: %w", first, err))
	}
	proof, err := tlog.ProveTree(int64(second), int64(first), l.hashReader(ctx))
	if err != nil {
		return nil, l.proofFailed(fmt.Errorf("prove consistency: %w", err))
	}
	// The proof's hashes lead to rootSecond, checked, so the old root they
	// make is the true one: a wrong rootFirst fails here too.
	if err := tlog.CheckTree(proof, int64(second), rootSecond, int64(first), rootFirst); err != nil {
		return nil, l.proofFailed(fmt.Errorf("%w: the consistency proof from %d to %d records, read from the stored tree hashes, does not check: stored tree hashes were changed",
			ErrIntegrity, first, second))
	}
	return proof, nil
}

// rootOf returns the root of the tree of size records, size at most the
// durable tree's, checked against the durable tree's root: read from the
// stored hashes and linked to durable.Root by a consistency proof.
func (l *Log) rootOf(ctx context.Context, size uint64, durable TreeHead) (tlog.Hash, error) {
	if size == durable.Size {
		return durable.Root, nil
	}
	r := l.hashReader(ctx)
	root, err := tlog.TreeHash(int64(size), r)
	if err != nil {
		return tlog.Hash{}, l.proofFailed(fmt.Errorf("tree hash of %d records: %w", size, err))
	}
	proof, err := tlog.ProveTree(int64(durable.Size), int64(size), r)
	if err != nil {
		return tlog.Hash{}, l.proofFailed(fmt.Errorf("prove consistency: %w", err))
	}
	if err := tlog.CheckTree(proof, int64(durable.Size), durable.Root, int64(size), root); err != nil {
		return tlog.Hash{}, l.proofFailed(fmt.Errorf("%w: the tree of %d records read from the stored tree hashes is not a prefix of the durable tree of %d records (root %s): stored tree hashes were changed",
			ErrIntegrity, size, durable.Size, durable.Root))
	}
	return root, nil
}

// proofFailed halts the log when err says the stored hashes were changed
// or lost (not when the store is merely unavailable), and returns err.
func (l *Log) proofFailed(err error) error {
	if errors.Is(err, ErrIntegrity) {
		l.halt(err)
	} else if errors.Is(err, ErrDataLoss) {
		err = fmt.Errorf("%w: %w", ErrIntegrity, err)
		l.halt(err)
	}
	return err
}
