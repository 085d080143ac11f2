package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// checkpointer signs checkpoints of the log's durable tree and keeps what
// it signed, so that it never signs a tree that does not extend it.
type checkpointer struct {
	log    *Log
	signer note.Signer

	mu      sync.Mutex
	checked bool   // the stored checkpoint was checked against the tree
	signed  uint64 // the size of the latest checkpoint stored
	any     bool   // a checkpoint is stored
}

// SignCheckpoint signs and stores a checkpoint of the durable tree when it
// grew since the latest stored checkpoint (or none is stored yet), and
// returns the tree and whether it signed. The first call checks that the
// durable tree extends the latest stored checkpoint (root and size) and
// fails with ErrCheckpointMismatch when it does not: signing on would
// sign a fork of what auditors hold. The gateway calls it periodically
// and once more at shutdown.
func (l *Log) SignCheckpoint(ctx context.Context) (TreeHead, bool, error) {
	return l.cp.sign(ctx)
}

func (c *checkpointer) sign(ctx context.Context) (TreeHead, bool, error) {
	if c.signer == nil {
		return TreeHead{}, false, ErrNoSigningKey
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	th, err := c.log.Tree(ctx)
	if err != nil {
		return TreeHead{}, false, err
	}
	if !c.checked {
		if err := c.checkStored(ctx, th); err != nil {
			return th, false, err
		}
		c.checked = true
	}
	if c.any && th.Size <= c.signed {
		return th, false, nil
	}
	msg, err := SignCheckpoint(c.signer, th)
	if err != nil {
		return th, false, err
	}
	if err := c.log.store.SaveCheckpoint(ctx, th.Size, msg); err != nil {
		return th, false, fmt.Errorf("save checkpoint: %w", err)
	}
	c.signed, c.any = th.Size, true
	return th, true, nil
}

// checkStored compares the latest stored checkpoint with the durable tree
// th and notes its size. The caller holds mu.
func (c *checkpointer) checkStored(ctx context.Context, th TreeHead) error {
	msg, err := c.log.store.LoadCheckpoint(ctx)
	if errors.Is(err, ErrNoCheckpoint) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load checkpoint: %w", err)
	}
	cp, err := ParseCheckpoint(msg)
	if err != nil {
		return fmt.Errorf("%w: the stored checkpoint: %w", ErrCheckpointMismatch, err)
	}
	if cp.Size > th.Size {
		return fmt.Errorf("%w: it names %d records, the log holds %d", ErrCheckpointMismatch, cp.Size, th.Size)
	}
	root, err := tlog.TreeHash(int64(cp.Size), c.log.hashReader(ctx))
	if err != nil {
		return fmt.Errorf("tree hash at the latest checkpoint's size %d: %w", cp.Size, err)
	}
	if root != cp.Root {
		return fmt.Errorf("%w: the tree of its %d records has root %s, the checkpoint %s", ErrCheckpointMismatch, cp.Size, root, cp.Root)
	}
	c.signed, c.any = cp.Size, true
	return nil
}
