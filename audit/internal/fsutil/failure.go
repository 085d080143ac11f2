package fsutil

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

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

// Lock takes an exclusive lock (flock) on f for the process: errLocked
// when another process holds it. The lock dies with the process, so a
// crash never leaves it behind; it is advisory, which is enough against a
// second stage4.
//
// A lock just released can still be held for a moment by a child that
// this process was forking when the lock's file was open (the child holds
// a copy of every descriptor until its exec closes it), so a held lock is
// tried again for up to lockPatience before it counts as another
// process's: a second stage4 holds it for good.
func Lock(f *os.File, errLocked error) error {
	deadline := time.Now().Add(lockPatience)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, syscall.EWOULDBLOCK):
			return fmt.Errorf("lock: %w", err)
		case time.Now().After(deadline):
			return errLocked
		}
		time.Sleep(wait)
	}
}

// lockPatience is how long Lock tries a held lock again: far longer than
// a fork takes to reach its exec.
const lockPatience = 500 * time.Millisecond
