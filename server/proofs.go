package server

import (
	"context"
	"errors"
	"fmt"

	"buf.build/go/protovalidate"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
)

// AuditTree serves the audit log's Merkle tree, its proofs and its latest
// checkpoint; *audit.Log is the implementation.
type AuditTree interface {
	// Tree is the tree over the durable records.
	Tree(ctx context.Context) (audit.TreeHead, error)
	// ProveRecord returns a record's leaf hash and inclusion proof in a
	// tree no larger than durable, checked against its root before it is
	// returned (see audit.Log.ProveRecord).
	ProveRecord(ctx context.Context, seq, size uint64, durable audit.TreeHead) (tlog.Hash, tlog.RecordProof, error)
	// ProveTree returns the consistency proof between two trees no
	// larger than durable, checked likewise.
	ProveTree(ctx context.Context, first, second uint64, durable audit.TreeHead) (tlog.TreeProof, error)
	// Checkpoint is the latest signed (with witnesses, cosigned)
	// checkpoint, or audit.ErrNoSigningKey or audit.ErrNoCheckpoint.
	Checkpoint(ctx context.Context) ([]byte, error)
}

// GetCheckpoint returns the latest signed checkpoint, whichever replica
// signed it.
func (s *Server) GetCheckpoint(ctx context.Context, _ *stage4v1.GetCheckpointRequest) (*stage4v1.GetCheckpointResponse, error) {
	cp, err := s.log.Checkpoint(ctx)
	if err != nil {
		return nil, readError(ctx, err)
	}
	return &stage4v1.GetCheckpointResponse{Checkpoint: string(cp)}, nil
}

// GetInclusionProof proves that a record is a leaf of a tree.
func (s *Server) GetInclusionProof(ctx context.Context, req *stage4v1.GetInclusionProofRequest) (*stage4v1.GetInclusionProofResponse, error) {
	if err := protovalidate.Validate(req); err != nil {
		return nil, invalidArgument(err, rpcerr.InvalidProofRequest)
	}
	p, err := proveInclusion(ctx, s.log, req.GetSequence(), req.GetTreeSize())
	if err != nil {
		return nil, readError(ctx, err)
	}
	return &stage4v1.GetInclusionProofResponse{TreeSize: p.treeSize, LeafHash: p.leaf[:], Hashes: hashBytes(p.proof)}, nil
}

// GetConsistencyProof proves that a tree extends a smaller one.
func (s *Server) GetConsistencyProof(ctx context.Context, req *stage4v1.GetConsistencyProofRequest) (*stage4v1.GetConsistencyProofResponse, error) {
	if err := protovalidate.Validate(req); err != nil {
		return nil, invalidArgument(err, rpcerr.InvalidProofRequest)
	}
	proof, err := proveConsistency(ctx, s.log, req.GetFirstSize(), req.GetSecondSize())
	if err != nil {
		return nil, readError(ctx, err)
	}
	return &stage4v1.GetConsistencyProofResponse{Hashes: hashBytes(proof)}, nil
}

// beyondTreeError is a sequence or size that the durable tree (or the
// latest checkpoint) does not reach yet.
type beyondTreeError struct {
	msg      string
	treeSize uint64 // how far it reaches
}

func (e *beyondTreeError) Error() string { return e.msg }

// inclusion is an inclusion proof and what it is for.
type inclusion struct {
	treeSize uint64
	leaf     tlog.Hash
	proof    tlog.RecordProof
}

// proveInclusion proves that record seq is in the tree of size leaves,
// size 0 standing for the latest checkpoint's (or, with no checkpoint, the
// durable tree's). The request's own rules (seq > 0, seq <= size) are
// checked already.
func proveInclusion(ctx context.Context, tree AuditTree, seq, size uint64) (inclusion, error) {
	var err error
	latest := size == 0
	if latest {
		// The checkpoint before the durable tree: a checkpoint is only
		// ever signed for a durable tree, so the tree read next reaches it.
		if size, err = latestSize(ctx, tree); err != nil {
			return inclusion{}, err
		}
	}
	durable, err := tree.Tree(ctx)
	if err != nil {
		return inclusion{}, err
	}
	switch {
	case size > durable.Size:
		return inclusion{}, &beyondTreeError{fmt.Sprintf("tree_size %d is beyond the durable audit log of %d records", size, durable.Size), durable.Size}
	case seq > size:
		return inclusion{}, &beyondTreeError{fmt.Sprintf("sequence %d is beyond the latest checkpoint's tree of %d records; ask again after the next checkpoint", seq, size), size}
	}
	leaf, proof, err := tree.ProveRecord(ctx, seq, size, durable)
	if err != nil {
		return inclusion{}, err
	}
	return inclusion{treeSize: size, leaf: leaf, proof: proof}, nil
}

// proveConsistency proves that the tree of second leaves extends that of
// first (0 < first <= second, checked already).
func proveConsistency(ctx context.Context, tree AuditTree, first, second uint64) (tlog.TreeProof, error) {
	durable, err := tree.Tree(ctx)
	if err != nil {
		return nil, err
	}
	if second > durable.Size {
		return nil, &beyondTreeError{fmt.Sprintf("second_size %d is beyond the durable audit log of %d records", second, durable.Size), durable.Size}
	}
	return tree.ProveTree(ctx, first, second, durable)
}

// latestSize is the latest checkpoint's tree size, or the durable tree's
// when no checkpoint is signed (no signing key, or none yet).
func latestSize(ctx context.Context, tree AuditTree) (uint64, error) {
	msg, err := tree.Checkpoint(ctx)
	if errors.Is(err, audit.ErrNoSigningKey) || errors.Is(err, audit.ErrNoCheckpoint) {
		durable, err := tree.Tree(ctx)
		return durable.Size, err
	}
	if err != nil {
		return 0, err
	}
	cp, err := audit.ParseCheckpoint(msg)
	if err != nil {
		return 0, fmt.Errorf("%w: the stored checkpoint: %w", audit.ErrDataLoss, err)
	}
	return cp.Size, nil
}

func hashBytes(hashes []tlog.Hash) [][]byte {
	out := make([][]byte, len(hashes))
	for i := range hashes {
		out[i] = hashes[i][:]
	}
	return out
}
