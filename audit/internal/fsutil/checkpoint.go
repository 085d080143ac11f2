package fsutil

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/internal/atomicfile"
)

// CheckpointFile is a store's latest signed checkpoint (audit.SignCheckpoint),
// kept in memory and in a file that holds the note's bytes as they are,
// replaced atomically each time a new one is saved. Auditors fetch it with
// GetCheckpoint and keep their own copies: the file only serves the latest.
type CheckpointFile struct {
	path  string
	watch *Watched
	mu    sync.Mutex
	note  []byte // nil: none
	size  uint64
}

// LoadCheckpointFile reads the checkpoint file at path, if there is one.
func LoadCheckpointFile(path string) (*CheckpointFile, error) {
	c := &CheckpointFile{path: path, watch: NewWatched(path)}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint file: %w", err)
	}
	cp, err := audit.ParseCheckpoint(data)
	if err != nil {
		return nil, fmt.Errorf("checkpoint file %s: %w", path, err)
	}
	if err := c.watch.Known(int64(len(data))); err != nil {
		return nil, fmt.Errorf("checkpoint file: %w", err)
	}
	c.note, c.size = data, cp.Size
	return c, nil
}

// Exists reports whether a checkpoint is kept.
func (c *CheckpointFile) Exists() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.note != nil
}

// Check reports, as a *ChangedError, a checkpoint file that something
// else than Save changed.
func (c *CheckpointFile) Check() error { return c.watch.Check() }

// Save replaces the checkpoint with note, for a tree of size leaves,
// unless the one kept is for a larger tree. A file that something else
// changed is not replaced: Check's error.
func (c *CheckpointFile) Save(size uint64, note []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.note != nil && size < c.size {
		return nil
	}
	if err := c.watch.Check(); err != nil {
		return err
	}
	if err := atomicfile.Replace(c.path, note, 0o600); err != nil {
		return fmt.Errorf("write checkpoint file: %w", err)
	}
	if err := c.watch.Known(int64(len(note))); err != nil {
		return fmt.Errorf("write checkpoint file: %w", err)
	}
	c.note, c.size = bytes.Clone(note), size
	return nil
}

// Latest returns the checkpoint kept, or audit.ErrNoCheckpoint.
func (c *CheckpointFile) Latest() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.note == nil {
		return nil, audit.ErrNoCheckpoint
	}
	return bytes.Clone(c.note), nil
}
