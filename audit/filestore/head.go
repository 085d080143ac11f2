package filestore

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stage4/stage4/audit"
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
var ErrHeadMismatch = errors.New("the audit log does not match its head file")

// headFile is the head file's content.
type headFile struct {
	Sequence uint64 `json:"sequence"`
	Hash     string `json:"hash"`
}

// readHead reads the head file at path; ok is false when there is none.
func readHead(path string) (h audit.Head, ok bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return audit.Head{}, false, nil
	}
	if err != nil {
		return audit.Head{}, false, fmt.Errorf("read head file %s: %w", path, err)
	}
	var hf headFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&hf); err != nil {
		return audit.Head{}, false, fmt.Errorf("%w: head file %s is unreadable: %w", ErrHeadMismatch, path, err)
	}
	sum, err := hex.DecodeString(strings.TrimPrefix(hf.Hash, "sha256:"))
	if err != nil || len(sum) != len(h.Hash) || !strings.HasPrefix(hf.Hash, "sha256:") {
		return audit.Head{}, false, fmt.Errorf("%w: head file %s is unreadable: bad hash %q", ErrHeadMismatch, path, hf.Hash)
	}
	h.Sequence = hf.Sequence
	copy(h.Hash[:], sum)
	return h, true, nil
}

// writeHead replaces the head file at path with h, atomically and durably.
func writeHead(path string, h audit.Head) error {
	data, err := json.Marshal(headFile{Sequence: h.Sequence, Hash: audit.FormatHash(h.Hash)})
	if err != nil {
		return err
	}
	return replaceFile(path, append(data, '\n'))
}

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

// setAside renames the head file at path to path.<unix time>.old (with a
// counter should that exist), so that an operator can still read what the
// log held before a new log began, and returns the new name.
func setAside(path string) (string, error) {
	base := fmt.Sprintf("%s.%d", path, time.Now().Unix())
	for i := 0; ; i++ {
		old := base + ".old"
		if i > 0 {
			old = fmt.Sprintf("%s-%d.old", base, i)
		}
		// Link, unlike Rename, never replaces an earlier .old file.
		err := os.Link(path, old)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if err := os.Remove(path); err != nil {
			return "", err
		}
		return old, syncDir(filepath.Dir(path))
	}
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
	if err := writeHead(s.path+HeadSuffix, h); err != nil {
		return fmt.Errorf("write head file %s: %w", s.path+HeadSuffix, err)
	}
	s.savedHead = h
	return nil
}
