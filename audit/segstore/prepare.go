package segstore

import (
	"errors"
	"io/fs"
	"os"
	"sync"

	"github.com/stage4/stage4/internal/atomicfile"
)

// nextState is the preparation of the next segment (nextFile) in the
// background.
type nextState struct {
	mu      sync.Mutex
	ready   bool // nextFile is complete
	running bool
	wg      sync.WaitGroup
}

// take reports whether a prepared next segment is ready, and hands it to
// the caller.
func (n *nextState) take() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	r := n.ready
	n.ready = false
	return r
}

// initNext adopts a next segment prepared by an earlier process, or
// removes what is left of one.
func (s *Store) initNext() {
	os.Remove(s.path(nextFile + ".tmp"))
	fi, err := os.Stat(s.path(nextFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err == nil && (s.cfg.preallocate && fi.Size() == s.cfg.segmentBytes || !s.cfg.preallocate && fi.Size() == 0):
		s.next.ready = true
	default:
		os.Remove(s.path(nextFile))
	}
}

// prepareNext starts preparing the next segment, unless one is ready or
// being prepared: a file of zeros of the segment size, synced, renamed
// to nextFile. It costs about 28 ms and the segment's size of writes per
// segment here, off the append path; a failure (a full disk) leaves the
// seal to reserve the space itself.
func (s *Store) prepareNext() {
	if !s.cfg.preallocate {
		return
	}
	n := &s.next
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ready || n.running {
		return
	}
	n.running = true
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		err := prepareFile(s.path(nextFile), s.dir, s.cfg.segmentBytes)
		n.mu.Lock()
		n.running, n.ready = false, err == nil
		n.mu.Unlock()
	}()
}

func prepareFile(path, dir string, size int64) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = zeroFill(f, 0, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = atomicfile.SyncDir(dir)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
