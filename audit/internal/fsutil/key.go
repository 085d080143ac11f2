package fsutil

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/stage4/stage4/internal/atomicfile"
)

// KeyLen is the length of a fingerprint key a store creates.
const KeyLen = 32

// LoadOrCreateKey reads the key file at path, or creates it with a new
// random key when there is none. The file holds exactly KeyLen raw bytes,
// mode 0600: who can read it can confirm a guessed token or plan against
// the fingerprints in the log, so a key file its group or others may read
// or write is refused.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key = make([]byte, KeyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("create key file %s: %w", path, err)
	}
	if err := atomicfile.Create(path, key, 0o600); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readKey(path) // created meanwhile: that key is the store's
		}
		return nil, fmt.Errorf("create key file %s: %w", path, err)
	}
	return key, nil
}

// readKey reads a key file a store created, refusing one that others may
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
