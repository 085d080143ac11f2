package filestore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/stage4/stage4/audit/internal/fsutil"
)

// checkIdentity reports, as a permanent failure, that the path no longer
// names the file the store writes, or that the file's length is not what
// the store wrote: the log was removed, renamed (logrotate's create),
// replaced, truncated (logrotate's copytruncate) or written by someone
// else. Without it, writes would go on into a deleted or renamed inode
// and be acknowledged while the log at path lost them. The caller holds
// ioMu, so that written is the file's length.
func (s *Store) checkIdentity() error {
	fi, err := os.Stat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s.latch(&fsutil.ChangedError{Msg: fmt.Sprintf("audit log %s was removed or renamed while in use", s.path)})
	case err != nil:
		return s.fail(fmt.Errorf("check that the audit log is still in place: %w", err))
	case !os.SameFile(fi, s.ident):
		return s.latch(&fsutil.ChangedError{Msg: fmt.Sprintf("audit log %s was replaced by another file while in use", s.path)})
	case fi.Size() < s.written:
		return s.latch(&fsutil.ChangedError{Msg: fmt.Sprintf("audit log %s was truncated to %d bytes (expected %d) while in use", s.path, fi.Size(), s.written)})
	case fi.Size() > s.written:
		return s.latch(&fsutil.ChangedError{Msg: fmt.Sprintf("audit log %s grew to %d bytes (expected %d): written to by another program while in use", s.path, fi.Size(), s.written)})
	}
	return nil
}
