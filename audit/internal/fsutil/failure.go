package fsutil

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"github.com/stage4/stage4/audit"
)

// Failure is a local store's permanent failure: the first error latched
// stays, because after a failed write or fsync the file's state is
// unknown to the process until a restart checks it again.
type Failure struct{ p atomic.Pointer[error] }

// Latch records err as the failure, unless there is one already, and
// returns the failure.
func (f *Failure) Latch(err error) error {
	f.p.CompareAndSwap(nil, &err)
	return *f.p.Load()
}

// Err returns the failure, or nil.
func (f *Failure) Err() error {
	if p := f.p.Load(); p != nil {
		return *p
	}
	return nil
}

// ChangedError is a log file changed under its store (removed, renamed,
// replaced, truncated or written by another program). It is an
// audit.ErrIntegrity (and so an audit.ErrDataLoss), and says itself what
// happened to which file.
type ChangedError struct{ Msg string }

func (e *ChangedError) Error() string { return e.Msg }

// Is makes a ChangedError an audit.ErrIntegrity and an audit.ErrDataLoss.
func (e *ChangedError) Is(target error) bool {
	return target == audit.ErrIntegrity || target == audit.ErrDataLoss
}

// Lock takes an exclusive lock (flock) on f for the process, without
// waiting: errLocked when another process holds it. The lock dies with
// the process, so a crash never leaves it behind; it is advisory, which
// is enough against a second stage4.
func Lock(f *os.File, errLocked error) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errLocked
	}
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	return nil
}
