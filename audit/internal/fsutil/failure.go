package fsutil

import (
	"sync/atomic"

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
// audit.ErrDataLoss, and says itself what happened to which file.
type ChangedError struct{ Msg string }

func (e *ChangedError) Error() string { return e.Msg }

// Is makes a ChangedError an audit.ErrDataLoss.
func (e *ChangedError) Is(target error) bool { return target == audit.ErrDataLoss }
