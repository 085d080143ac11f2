package fsutil

import (
	"os"
	"path/filepath"
)

// ReplaceFile replaces path with a file (mode 0600) holding data, so that a
// reader, or the next start after a crash, sees the old content or the new
// one, never a part: the data is written and fsynced under a temporary
// name, renamed to path, and the directory fsynced.
func ReplaceFile(path string, data []byte) error {
	return placeFile(path, data, os.Rename)
}

// CreateFile creates path (mode 0600) holding data, failing with
// fs.ErrExist if it exists. Like O_CREATE|O_EXCL, it never replaces a file;
// unlike it, a crash never leaves the file empty or short: the data is
// written and fsynced under a temporary name, hard-linked to path (which
// fails if path exists), and the directory fsynced.
func CreateFile(path string, data []byte) error {
	return placeFile(path, data, os.Link)
}

func placeFile(path string, data []byte, place func(tmp, path string) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = place(tmp.Name(), path)
	}
	if err == nil {
		err = SyncDir(dir)
	}
	return err
}

// SyncDir makes the directory's entries durable: a created, renamed or
// removed file's name is durable only once its directory is.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
