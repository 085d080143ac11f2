package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/stage4/stage4/audit"
	// The stores this binary serves: each registers its driver.
	_ "github.com/stage4/stage4/audit/pgstore"
	_ "github.com/stage4/stage4/audit/segstore"
)

// OpenStore opens the audit store that cfg.AuditLog names, through the
// driver registry (audit.Open): the one place where a location picks a
// store. A location no driver takes (an unknown scheme, a mistyped URL)
// is an ErrConfig, with any password redacted.
func OpenStore(ctx context.Context, cfg Config, logger *slog.Logger) (audit.Store, error) {
	oc := cfg.AuditStore
	oc.Logger = logger
	s, loc, err := audit.Open(ctx, cfg.AuditLog, oc)
	if errors.Is(err, audit.ErrLocation) {
		return nil, fmt.Errorf("%w: --audit-log: %w", ErrConfig, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open audit log %s: %w", loc.Redacted(), err)
	}
	return s, nil
}

// MinFingerprintKeyBytes is the shortest key LoadFingerprintKey accepts:
// HMAC-SHA256 gains nothing from more, and guessing fewer is feasible.
const MinFingerprintKeyBytes = 32

// LoadFingerprintKey reads a fingerprint key from the file at path
// (--fingerprint-key-file). The file's bytes are the key, as they are (a
// trailing newline is part of it): at least MinFingerprintKeyBytes, for
// instance made with "head -c 32 /dev/urandom". A file others than its
// owner may read is refused (see checkSecretFile), because whoever reads
// the key can confirm guessed tokens and plans against the audit log.
func LoadFingerprintKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --fingerprint-key-file: %w", ErrConfig, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("--fingerprint-key-file: %w", err)
	}
	if err := checkSecretFile("--fingerprint-key-file", path, fi); err != nil {
		return nil, err
	}
	// One byte more than a sane key file, to refuse the wrong file early.
	key, err := io.ReadAll(io.LimitReader(f, maxFingerprintKeyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("--fingerprint-key-file: %w", err)
	}
	switch n := len(key); {
	case n < MinFingerprintKeyBytes:
		return nil, fmt.Errorf("%w: --fingerprint-key-file %s holds %d bytes; the key needs at least %d random bytes "+
			"(head -c 32 /dev/urandom > %s)", ErrConfig, path, n, MinFingerprintKeyBytes, path)
	case n > maxFingerprintKeyBytes:
		return nil, fmt.Errorf("%w: --fingerprint-key-file %s holds more than %d bytes: not a key file", ErrConfig, path, maxFingerprintKeyBytes)
	}
	return key, nil
}

// maxFingerprintKeyBytes bounds the key file.
const maxFingerprintKeyBytes = 4096

// FingerprintKey returns the key of the keyed fingerprints of tokens and
// plans: the key in cfg.FingerprintKeyFile when it is set, else the audit
// store's own (audit.Store.FingerprintKey), which all processes sharing
// the store share.
func FingerprintKey(ctx context.Context, store audit.Store, cfg Config) ([]byte, error) {
	if cfg.FingerprintKeyFile != "" {
		return LoadFingerprintKey(cfg.FingerprintKeyFile)
	}
	key, err := store.FingerprintKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("fingerprint key of the audit store: %w", err)
	}
	return key, nil
}
