package filestore

import (
	"context"

	"github.com/stage4/stage4/audit"
)

// CheckpointSuffix is appended to the log's path to name its checkpoint
// file: the latest signed checkpoint (audit.SignCheckpoint), the note's
// bytes as they are, replaced atomically (as the head file) each time a
// new one is signed. Auditors fetch it with GetCheckpoint and keep their
// own copies: this file only serves the latest.
const CheckpointSuffix = ".checkpoint"

// SaveCheckpoint replaces the checkpoint file with checkpoint unless the
// one there is for a larger tree.
func (s *Store) SaveCheckpoint(_ context.Context, size uint64, checkpoint []byte) error {
	if s.isClosed() {
		return audit.ErrClosed
	}
	return s.checkpoint.Save(size, checkpoint)
}

// LoadCheckpoint returns the latest checkpoint.
func (s *Store) LoadCheckpoint(context.Context) ([]byte, error) {
	if s.isClosed() {
		return nil, audit.ErrClosed
	}
	return s.checkpoint.Latest()
}
