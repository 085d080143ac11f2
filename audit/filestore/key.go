package filestore

import (
	"context"
	"slices"

	"github.com/stage4/stage4/audit/internal/fsutil"
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
const KeyLen = fsutil.KeyLen

// FingerprintKey returns the key read or created by Open.
func (s *Store) FingerprintKey(context.Context) ([]byte, error) {
	return slices.Clone(s.key), nil
}
