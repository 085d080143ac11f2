// Package atomicfile writes whole small files so that a reader, or the
// next start after a crash, finds the old content or the new one, never a
// part: the data is written and fsynced under a temporary name in the same
// directory, put in place, and the directory fsynced. The audit log's
// head, key, checkpoint and pin files use it, and so do the auditor's
// commands for the checkpoints they keep.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Replace replaces path with a file of mode perm holding data.
func Replace(path string, data []byte, perm os.FileMode) error {
	return place(path, data, perm, os.Rename)
}

// Create creates path, of mode perm, holding data, failing with
// fs.ErrExist if it exists. Like O_CREATE|O_EXCL it never replaces a file;
// unlike it, a crash never leaves the file empty or short: the temporary
// file is hard-linked to path, which fails if path exists.
func Create(path string, data []byte, perm os.FileMode) error {
	return place(path, data, perm, os.Link)
}

func place(path string, data []byte, perm os.FileMode, put func(tmp, path string) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	// CreateTemp makes 0600; Chmod, unlike the mode of a create, is not
	// narrowed by the umask.
	err = tmp.Chmod(perm)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = put(tmp.Name(), path)
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
