package server

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"google.golang.org/grpc/codes"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
)

// signedHarness is a harness whose log signs checkpoints with a new key.
func signedHarness(t *testing.T) (*harness, note.Verifier) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "stage4.test/audit")
	require.NoError(t, err)
	signer, err := note.NewSigner(skey)
	require.NoError(t, err)
	verifier, err := note.NewVerifier(vkey)
	require.NoError(t, err)
	return newHarness(t, harnessOptions{auditOptions: []audit.Option{audit.WithCheckpointSigner(signer)}}), verifier
}

// appendEvents appends n events straight to the log.
func (h *harness) appendEvents(t *testing.T, n int) {
	t.Helper()
	for range n {
		_, err := h.log.Append(context.Background(), audit.Event{Type: audit.PlanReceived, ExecutionID: "e", UserID: "alice"})
		require.NoError(t, err)
	}
}

// checkpoint signs a checkpoint of the durable tree, fetches it over gRPC
// and opens it with verifier.
func (h *harness) checkpoint(t *testing.T, verifier note.Verifier) audit.Checkpoint {
	t.Helper()
	_, _, err := h.log.SignCheckpoint(context.Background())
	require.NoError(t, err)
	res, err := h.client.GetCheckpoint(context.Background(), &stage4v1.GetCheckpointRequest{})
	require.NoError(t, err)
	cp, err := audit.OpenCheckpoint([]byte(res.GetCheckpoint()), verifier)
	require.NoError(t, err)
	return cp
}

// leafHashes are the leaf hashes of the log's records, computed here
// from the bytes of its segment files.
func leafHashes(t *testing.T, path string) []tlog.Hash {
	t.Helper()
	var leaves []tlog.Hash
	for _, line := range testkit.LogLines(t, path) {
		leaves = append(leaves, tlog.RecordHash(line))
	}
	return leaves
}

func toHashes(t *testing.T, raw [][]byte) []tlog.Hash {
	t.Helper()
	out := make([]tlog.Hash, len(raw))
	for i, b := range raw {
		require.Len(t, b, tlog.HashSize)
		out[i] = tlog.Hash(b)
	}
	return out
}

// TestProofsCheckAgainstSignedCheckpoints fetches checkpoints and proofs
// over gRPC and checks them with tlog's verifiers and leaf hashes computed
// from the log file itself: every record is in the tree its checkpoint
// signs, and the later tree extends the earlier one.
func TestProofsCheckAgainstSignedCheckpoints(t *testing.T) {
	t.Parallel()
	h, verifier := signedHarness(t)
	ctx := context.Background()
	h.appendEvents(t, 13)
	first := h.checkpoint(t, verifier)
	require.Equal(t, uint64(13), first.Size)
	h.appendEvents(t, 22)
	second := h.checkpoint(t, verifier)
	require.Equal(t, uint64(35), second.Size)
	leaves := leafHashes(t, h.logPath)
	require.Len(t, leaves, 35)

	for seq := uint64(1); seq <= second.Size; seq++ {
		res, err := h.client.GetInclusionProof(ctx, &stage4v1.GetInclusionProofRequest{Sequence: seq})
		require.NoError(t, err)
		require.Equal(t, second.Size, res.GetTreeSize(), "tree_size 0 is the latest checkpoint's")
		require.Equal(t, leaves[seq-1][:], res.GetLeafHash())
		require.NoError(t, tlog.CheckRecord(toHashes(t, res.GetHashes()), int64(second.Size), second.Root, int64(seq-1), leaves[seq-1]), "sequence %d", seq)
		if seq > first.Size {
			continue
		}
		res, err = h.client.GetInclusionProof(ctx, &stage4v1.GetInclusionProofRequest{Sequence: seq, TreeSize: first.Size})
		require.NoError(t, err)
		require.Equal(t, first.Size, res.GetTreeSize())
		require.NoError(t, tlog.CheckRecord(toHashes(t, res.GetHashes()), int64(first.Size), first.Root, int64(seq-1), leaves[seq-1]), "sequence %d in the first tree", seq)
	}

	res, err := h.client.GetConsistencyProof(ctx, &stage4v1.GetConsistencyProofRequest{FirstSize: first.Size, SecondSize: second.Size})
	require.NoError(t, err)
	require.NoError(t, tlog.CheckTree(toHashes(t, res.GetHashes()), int64(second.Size), second.Root, int64(first.Size), first.Root))
	// A proof for the wrong root does not check: the proofs carry weight.
	require.Error(t, tlog.CheckTree(toHashes(t, res.GetHashes()), int64(second.Size), first.Root, int64(first.Size), first.Root))
}

// TestProofRequestErrors: the caller's mistakes are INVALID_ARGUMENT, what
// the tree does not reach yet OUT_OF_RANGE.
func TestProofRequestErrors(t *testing.T) {
	t.Parallel()
	h, verifier := signedHarness(t)
	h.appendEvents(t, 5)
	h.checkpoint(t, verifier) // of 5 records
	h.appendEvents(t, 2)      // 7 durable records, the latest checkpoint 5

	inclusion := []struct {
		name   string
		req    *stage4v1.GetInclusionProofRequest
		code   codes.Code
		reason stage4v1.ErrorReason
	}{
		{"sequence 0", &stage4v1.GetInclusionProofRequest{}, codes.InvalidArgument, rpcerr.InvalidProofRequest},
		{"sequence beyond tree_size", &stage4v1.GetInclusionProofRequest{Sequence: 4, TreeSize: 3}, codes.InvalidArgument, rpcerr.InvalidProofRequest},
		{"tree_size beyond the log", &stage4v1.GetInclusionProofRequest{Sequence: 1, TreeSize: 8}, codes.OutOfRange, rpcerr.BeyondTree},
		{"sequence beyond the latest checkpoint", &stage4v1.GetInclusionProofRequest{Sequence: 6}, codes.OutOfRange, rpcerr.BeyondTree},
		{"sequence beyond the log", &stage4v1.GetInclusionProofRequest{Sequence: 1 << 62}, codes.OutOfRange, rpcerr.BeyondTree},
		{"durable but not yet checkpointed, by size", &stage4v1.GetInclusionProofRequest{Sequence: 6, TreeSize: 7}, codes.OK, 0},
	}
	for _, tt := range inclusion {
		t.Run("inclusion/"+tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := h.client.GetInclusionProof(context.Background(), tt.req)
			if tt.code == codes.OK {
				require.NoError(t, err)
				return
			}
			requireStatus(t, err, tt.code, tt.reason.String())
		})
	}
	consistency := []struct {
		name          string
		first, second uint64
		code          codes.Code
		reason        stage4v1.ErrorReason
	}{
		{"first_size 0", 0, 5, codes.InvalidArgument, rpcerr.InvalidProofRequest},
		{"both 0", 0, 0, codes.InvalidArgument, rpcerr.InvalidProofRequest},
		{"first_size beyond second_size", 5, 4, codes.InvalidArgument, rpcerr.InvalidProofRequest},
		{"second_size beyond the log", 5, 8, codes.OutOfRange, rpcerr.BeyondTree},
		{"equal sizes", 5, 5, codes.OK, 0},
	}
	for _, tt := range consistency {
		t.Run("consistency/"+tt.name, func(t *testing.T) {
			t.Parallel()
			res, err := h.client.GetConsistencyProof(context.Background(), &stage4v1.GetConsistencyProofRequest{FirstSize: tt.first, SecondSize: tt.second})
			if tt.code == codes.OK {
				require.NoError(t, err)
				require.Empty(t, res.GetHashes())
				return
			}
			requireStatus(t, err, tt.code, tt.reason.String())
		})
	}
}

// TestProofsWithoutSigningKey: without a key there is no checkpoint
// (FAILED_PRECONDITION, NO_SIGNING_KEY), but the tree is kept and proofs
// are served, tree_size 0 standing for the durable log.
func TestProofsWithoutSigningKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.appendEvents(t, 6)
	_, err := h.client.GetCheckpoint(context.Background(), &stage4v1.GetCheckpointRequest{})
	requireStatus(t, err, codes.FailedPrecondition, rpcerr.NoSigningKey.String())

	tree, err := h.log.Tree(context.Background())
	require.NoError(t, err)
	leaves := leafHashes(t, h.logPath)
	res, err := h.client.GetInclusionProof(context.Background(), &stage4v1.GetInclusionProofRequest{Sequence: 3})
	require.NoError(t, err)
	require.Equal(t, uint64(6), res.GetTreeSize())
	require.NoError(t, tlog.CheckRecord(toHashes(t, res.GetHashes()), 6, tree.Root, 2, leaves[2]))
}
