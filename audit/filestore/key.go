package filestore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
)

// KeySuffix is appended to the log's path to name its key file: the
// store's fingerprint key (see audit.Store.FingerprintKey), exactly
// KeyLen raw random bytes, mode 0600. Open creates it when it is absent.
// The bytes are the key as they are, so the file can be copied to another
// store's place or given to stage4 serve --fingerprint-key-file unchanged.
//
// Who can read it can confirm a guessed token or plan against the
// fingerprints in the log, so Open refuses a key file that its group or
// others may read or write.
const KeySuffix = ".key"

// KeyLen is the length of a fingerprint key the store creates.
const KeyLen = 32

// FingerprintKey returns the key read or created by Open.
func (s *Store) FingerprintKey(context.Context) ([]byte, error) {
	return slices.Clone(s.key), nil
}

// loadOrCreateKey reads the key file at path, or creates it with a new
// random key when there is none.
func loadOrCreateKey(path string) ([]byte, error) {
	key, err := readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key = make([]byte, KeyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("create key file %s: %w", path, err)
	}
	if err := createFile(path, key); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readKey(path) // created meanwhile: that key is the store's
		}
		return nil, fmt.Errorf("create key file %s: %w", path, err)
	}
	return key, nil
}

// readKey reads a key file the store created, refusing one that others may
// read or that does not hold exactly KeyLen bytes.
func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("read key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o: it is a secret, readable by its owner only (chmod 600 %s)", path, perm, path)
	}
	if fi.Size() != KeyLen {
		return nil, fmt.Errorf("key file %s holds %d bytes, not the %d random bytes the store writes", path, fi.Size(), KeyLen)
	}
	key := make([]byte, KeyLen)
	if _, err := io.ReadFull(f, key); err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	return key, nil
}
