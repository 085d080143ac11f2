package fsutil

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
	"github.com/stage4/stage4/internal/atomicfile"
)

// ErrHeadMismatch: the log does not hold the last record its head file
// names (it was removed, renamed, replaced or truncated, while the store
// was running or stopped), or the head file is unreadable. A store
// refuses such a log unless told to begin a new one.
var ErrHeadMismatch = errors.New("the audit log does not match its head file")

// headFile is the head file's content: one JSON object on one line.
type headFile struct {
	Sequence uint64 `json:"sequence"`
	Hash     string `json:"hash"`
}

// ReadHead reads the head file at path; ok is false when there is none.
// An unreadable head file is an ErrHeadMismatch.
func ReadHead(path string) (h audit.Head, ok bool, err error) {
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
	sum, err := ParseHash(hf.Hash)
	if err != nil {
		return audit.Head{}, false, fmt.Errorf("%w: head file %s is unreadable: %w", ErrHeadMismatch, path, err)
	}
	h.Sequence, h.Hash = hf.Sequence, sum
	return h, true, nil
}

// ParseHash parses a hash as records carry it (audit.FormatHash).
func ParseHash(s string) (sum [32]byte, err error) {
	b, err := hex.DecodeString(strings.TrimPrefix(s, "sha256:"))
	if err != nil || len(b) != len(sum) || !strings.HasPrefix(s, "sha256:") {
		return sum, fmt.Errorf("bad hash %q", s)
	}
	copy(sum[:], b)
	return sum, nil
}

// WriteHead replaces the head file at path with h, atomically and durably.
func WriteHead(path string, h audit.Head) error {
	data, err := json.Marshal(headFile{Sequence: h.Sequence, Hash: audit.FormatHash(h.Hash)})
	if err != nil {
		return err
	}
	return atomicfile.Replace(path, append(data, '\n'), 0o600)
}

// SetAside renames the file at path to path.<unix time>.old (with a
// counter should that exist), so that an operator can still read what the
// log held before a new log began, and returns the new name.
func SetAside(path string) (string, error) {
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
		return old, atomicfile.SyncDir(filepath.Dir(path))
	}
}

// SetAsideIfExists sets the file at path aside (SetAside) if there is one.
func SetAsideIfExists(path string) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	_, err := SetAside(path)
	return err
}
