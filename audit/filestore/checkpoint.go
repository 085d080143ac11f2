package filestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/stage4/stage4/audit"
)

// CheckpointSuffix is appended to the log's path to name its checkpoint
// file: the latest signed checkpoint (audit.SignCheckpoint), the note's
// bytes as they are, replaced atomically (as the head file) each time a
// new one is signed. Auditors fetch it with GetCheckpoint and keep their
// own copies: this file only serves the latest.
const CheckpointSuffix = ".checkpoint"

// checkpointState is the latest checkpoint, read at Open and kept in
// memory.
type checkpointState struct {
	mu   sync.Mutex
	note []byte // nil: none
	size uint64
}

// loadCheckpoint reads the checkpoint file, if any.
func (s *Store) loadCheckpoint() error {
	path := s.path + CheckpointSuffix
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read checkpoint file: %w", err)
	}
	cp, err := audit.ParseCheckpoint(data)
	if err != nil {
		return fmt.Errorf("checkpoint file %s: %w", path, err)
	}
	s.checkpoint.note, s.checkpoint.size = data, cp.Size
	return nil
}

// SaveCheckpoint replaces the checkpoint file with checkpoint unless the
// one there is for a larger tree.
func (s *Store) SaveCheckpoint(_ context.Context, size uint64, checkpoint []byte) error {
	if s.isClosed() {
		return audit.ErrClosed
	}
	c := &s.checkpoint
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.note != nil && size < c.size {
		return nil
	}
	if err := replaceFile(s.path+CheckpointSuffix, checkpoint); err != nil {
		return fmt.Errorf("write checkpoint file: %w", err)
	}
	c.note, c.size = bytes.Clone(checkpoint), size
	return nil
}

// LoadCheckpoint returns the latest checkpoint.
func (s *Store) LoadCheckpoint(context.Context) ([]byte, error) {
	if s.isClosed() {
		return nil, audit.ErrClosed
	}
	c := &s.checkpoint
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.note == nil {
		return nil, audit.ErrNoCheckpoint
	}
	return bytes.Clone(c.note), nil
}

// setAsideCheckpoint sets the checkpoint file at path aside as the head
// file's (see WithNewLog), if there is one: it names the tree of a log
// that is gone, which the new log will not extend.
func setAsideCheckpoint(path string) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	_, err := setAside(path)
	return err
}
