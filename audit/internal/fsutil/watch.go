package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
)

// Watched is a file of a log directory whose identity (inode) and length
// its store knows, because only the store changes it: the seal file, the
// head, key, tree and checkpoint files. Check, before each use and at
// every ping, finds one that anything else removed, renamed, replaced,
// truncated or appended to, as the active segment's check does. A file
// changed in place at the same length (a flipped byte) is not seen here:
// the tree's hashes are checked against signed roots instead, and audit
// verify reads the rest.
type Watched struct {
	path string
	mu   sync.Mutex
	fi   os.FileInfo // nil: the store has not written or read it yet
	size int64
}

// NewWatched watches the file at path, which the store has not used yet.
func NewWatched(path string) *Watched { return &Watched{path: path} }

// Path is the watched file's path.
func (w *Watched) Path() string { return w.path }

// Known takes the file as it is now, of size bytes, after the store read
// or wrote it.
func (w *Watched) Known(size int64) error {
	fi, err := os.Stat(w.path)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fi, w.size = fi, size
	return nil
}

// KnownFile is Known for a file the store holds open: f is the file.
func (w *Watched) KnownFile(f *os.File, size int64) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fi, w.size = fi, size
	return nil
}

// Grow notes that the store appended n bytes.
func (w *Watched) Grow(n int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.size += n
}

// Forget stops watching until the next Known (a file the store removed).
func (w *Watched) Forget() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fi = nil
}

// Check returns a *ChangedError when the path no longer names the file
// the store knows, at the length it knows; nil when it does, or when the
// store does not know the file yet.
func (w *Watched) Check() error {
	w.mu.Lock()
	known, size := w.fi, w.size
	w.mu.Unlock()
	if known == nil {
		return nil
	}
	fi, err := os.Stat(w.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &ChangedError{Msg: fmt.Sprintf("audit log file %s was removed or renamed while in use", w.path)}
	case err != nil:
		return fmt.Errorf("check that %s is still in place: %w", w.path, err)
	case !os.SameFile(fi, known):
		return &ChangedError{Msg: fmt.Sprintf("audit log file %s was replaced by another file while in use", w.path)}
	case fi.Size() != size:
		return &ChangedError{Msg: fmt.Sprintf("audit log file %s is %d bytes long (expected %d): truncated or written to by another program while in use", w.path, fi.Size(), size)}
	}
	return nil
}
