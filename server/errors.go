package server

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/internal/rpcerr"
)

// readError is the one mapping of the audit log's errors to a status for
// the RPCs that read it (ListAuditEvents, GetCheckpoint and the proofs):
// the caller's own mistakes are INVALID_ARGUMENT, a key that is not
// configured FAILED_PRECONDITION, what the tree does not reach yet
// OUT_OF_RANGE, a log that no longer matches what was written DATA_LOSS,
// everything else UNAVAILABLE (retry, maybe elsewhere). The execution
// lifecycle's own outcomes (AUDIT_UNAVAILABLE, OUTCOME_UNKNOWN) are made
// by the interceptor, which knows how far an execution got.
func readError(ctx context.Context, err error) error {
	var beyond *beyondTreeError
	switch {
	case errors.Is(err, audit.ErrInvalidPageToken):
		return rpcerr.New(codes.InvalidArgument, rpcerr.InvalidPageToken,
			"page_token was not issued by this log for these filters", nil)
	case errors.Is(err, audit.ErrInvalidQuery):
		return rpcerr.New(codes.InvalidArgument, rpcerr.InvalidListRequest, strings.TrimPrefix(err.Error(), audit.ErrInvalidQuery.Error()+": "), nil)
	case errors.Is(err, audit.ErrNoSigningKey):
		return rpcerr.New(codes.FailedPrecondition, rpcerr.NoSigningKey,
			"this Stage-4 signs no checkpoints (no --audit-signing-key); proofs are served for the tree sizes you name", nil)
	case errors.Is(err, audit.ErrNoCheckpoint):
		return rpcerr.New(codes.Unavailable, rpcerr.NoCheckpoint, "no checkpoint has been signed yet", nil)
	case errors.As(err, &beyond):
		return rpcerr.New(codes.OutOfRange, rpcerr.BeyondTree, beyond.msg,
			map[string]string{"tree_size": strconv.FormatUint(beyond.treeSize, 10)})
	case errors.Is(err, audit.ErrDataLoss):
		return rpcerr.New(codes.DataLoss, rpcerr.AuditReadFailed, "the audit log changed under the server", nil)
	case ctx.Err() != nil:
		return rpcerr.New(status.FromContextError(ctx.Err()).Code(), rpcerr.AuditReadFailed, "stopped: "+ctx.Err().Error(), nil)
	default:
		return rpcerr.New(codes.Unavailable, rpcerr.AuditReadFailed, "the audit log cannot be read", nil)
	}
}
