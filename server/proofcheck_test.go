package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"
	"google.golang.org/grpc/codes"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
)

// TestProofsFromADamagedTreeAreNeverServed: one hash flipped in the log
// directory's tree file (in place: same file, same length) gave proofs
// that failed at the auditor's, who then blamed the records. Every proof
// is now checked against the durable tree's root, computed from the
// records, before it is returned: the request fails with DATA_LOSS and
// the log halts (NOT_SERVING, no more plans, no more checkpoints).
func TestProofsFromADamagedTreeAreNeverServed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		index int64 // the stored hash flipped
		call  func(h *harness) error
	}{
		{"inclusion in the durable tree", tlog.StoredHashIndex(0, 2), func(h *harness) error {
			_, err := h.client.GetInclusionProof(context.Background(), &stage4v1.GetInclusionProofRequest{Sequence: 4, TreeSize: 20})
			return err
		}},
		{"inclusion in an older tree", tlog.StoredHashIndex(1, 0), func(h *harness) error {
			_, err := h.client.GetInclusionProof(context.Background(), &stage4v1.GetInclusionProofRequest{Sequence: 4, TreeSize: 11})
			return err
		}},
		{"consistency", tlog.StoredHashIndex(2, 0), func(h *harness) error {
			_, err := h.client.GetConsistencyProof(context.Background(), &stage4v1.GetConsistencyProofRequest{FirstSize: 6, SecondSize: 13})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, _ := signedHarness(t)
			h.appendEvents(t, 20)
			require.NoError(t, tt.call(h), "proofs from the intact tree")

			f, err := os.OpenFile(filepath.Join(h.logPath, segstore.TreeFile), os.O_RDWR, 0)
			require.NoError(t, err)
			b := make([]byte, 1)
			_, err = f.ReadAt(b, tt.index*tlog.HashSize)
			require.NoError(t, err)
			b[0] ^= 1
			_, err = f.WriteAt(b, tt.index*tlog.HashSize)
			require.NoError(t, err)
			require.NoError(t, f.Close())

			requireStatus(t, tt.call(h), codes.DataLoss, rpcerr.AuditReadFailed.String())
			require.ErrorIs(t, h.log.Halted(), audit.ErrIntegrity)
			require.ErrorContains(t, h.log.Halted(), "stored tree hashes were changed")
			_, _, err = h.log.SignCheckpoint(context.Background())
			require.ErrorIs(t, err, audit.ErrIntegrity)
		})
	}
}
