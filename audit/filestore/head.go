package filestore

import (
	"fmt"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/internal/fsutil"
)

// HeadSuffix is appended to the log's path to name its head file: the
// sequence and hash of the log's last durable record, one JSON object on
// one line, such as {"sequence":42,"hash":"sha256:…"}. A hash chain alone
// cannot show that records were cut off its end or that the whole file
// was replaced; the head file, beside the log, lets Open see that the log
// no longer reaches a record it once held (ErrHeadMismatch).
//
// The store writes it from durable state only (records already fsynced),
// atomically (a temporary file, fsynced, renamed over the old one, then
// the directory fsynced), at Open, from Ping when the head moved (the log
// pings about once a second) and at Close; never on the append path. So
// it may lag the log by up to a ping, never lead it.
const HeadSuffix = ".head"

// ErrHeadMismatch: the log does not hold the last record its head file
// names (it was removed, renamed, replaced or truncated, while the store
// was running or stopped), or the head file is unreadable. Open refuses
// the log unless WithNewLog.
var ErrHeadMismatch = fsutil.ErrHeadMismatch

// headMismatch is Open's refusal of a log that lost the head file's record.
func headMismatch(path string, saved audit.Head, found error) error {
	return fmt.Errorf("open audit log %s: %w: head file %s names record %d (hash %s), but %w",
		path, ErrHeadMismatch, path+HeadSuffix, saved.Sequence, audit.FormatHash(saved.Hash), found)
}

// checkHead compares the head file's head with what load found: nil when
// the log holds that record, else what the log holds instead.
func checkHead(path string, want audit.Head, records uint64, hashAtWant string) error {
	switch {
	case records == 0:
		return fmt.Errorf("%s holds no records", path)
	case records < want.Sequence:
		return fmt.Errorf("%s holds only %d records", path, records)
	case hashAtWant != audit.FormatHash(want.Hash):
		return fmt.Errorf("record %d of %s has hash %s: another log", want.Sequence, path, hashAtWant)
	}
	return nil
}

// saveHead writes h, a durable head, to the head file if it moved since
// the last write. An empty log has nothing to protect and gets no head file.
func (s *Store) saveHead(h audit.Head) error {
	s.headMu.Lock()
	defer s.headMu.Unlock()
	if h.Sequence <= s.savedHead.Sequence {
		return nil
	}
	// The head file vouches for the tree hashes of its records too (see
	// TreeSuffix): they were written before h became durable, and are
	// fsynced now, before the head file names them.
	if err := s.tree.Sync(); err != nil {
		return s.fail(fmt.Errorf("fsync tree file: %w", err))
	}
	if err := fsutil.WriteHead(s.path+HeadSuffix, h); err != nil {
		return fmt.Errorf("write head file %s: %w", s.path+HeadSuffix, err)
	}
	s.savedHead = h
	return nil
}
