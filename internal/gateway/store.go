package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	"github.com/stage4/stage4/audit/pgstore"
)

// IsDatabaseURL reports whether an --audit-log value names a PostgreSQL
// database rather than a file.
func IsDatabaseURL(auditLog string) bool { return pgstore.IsURL(auditLog) }

// OpenStore opens the audit store that cfg.AuditLog names: a PostgreSQL
// database for a postgres:// or postgresql:// URL, shared with every other
// replica that names it, else a local file. A file that lost records
// since the last start (see filestore.HeadSuffix) is refused unless
// cfg.NewAuditLog.
func OpenStore(ctx context.Context, cfg Config, logger *slog.Logger) (audit.Store, error) {
	auditLog := cfg.AuditLog
	if IsDatabaseURL(auditLog) {
		var opts []pgstore.Option
		if cfg.ReplicaName != "" {
			opts = append(opts, pgstore.WithReplicaName(cfg.ReplicaName))
		}
		opts = append(opts, cfg.PGStoreOptions...)
		s, err := pgstore.Open(ctx, auditLog, opts...)
		if err != nil {
			return nil, fmt.Errorf("open audit log %s: %w", RedactURL(auditLog), err)
		}
		logger.Info("audit store: PostgreSQL", "replica_name", s.ReplicaName(), "instance_id", s.InstanceID())
		return s, nil
	}
	var opts []filestore.Option
	if cfg.NewAuditLog {
		opts = append(opts, filestore.WithNewLog())
	}
	s, err := filestore.Open(cfg.AuditLog, opts...)
	if errors.Is(err, filestore.ErrHeadMismatch) {
		return nil, fmt.Errorf("%w; the log was removed, renamed, replaced or truncated: restore it, "+
			"or start once with --audit-new-log to begin a new log (the head file is then kept aside)", err)
	}
	if err != nil {
		return nil, err // already says "open audit log"
	}
	rec := s.Recovery()
	if rec.TruncatedBytes > 0 {
		logger.Warn("audit log repaired after an unclean stop: cut an incomplete last line",
			"truncated_bytes", rec.TruncatedBytes)
	}
	if rec.TreeRebuilt != "" {
		logger.Warn("rebuilt the audit log's Merkle tree file from the whole log",
			"audit_log", cfg.AuditLog, "reason", rec.TreeRebuilt, "records", rec.TreeRecomputed)
	} else if rec.TreeRecomputed > 0 {
		logger.Info("recomputed the tree hashes of the audit log's last records after an unclean stop",
			"records", rec.TreeRecomputed)
	}
	if rec.OldHeadFile != "" {
		logger.Warn("began a new audit log (--audit-new-log) although the log lost records; the old head file is kept aside",
			"audit_log", cfg.AuditLog, "old_head_file", rec.OldHeadFile, "mismatch", rec.HeadMismatch,
			"records", rec.Records)
	}
	return s, nil
}

// MinFingerprintKeyBytes is the shortest key LoadFingerprintKey accepts:
// HMAC-SHA256 gains nothing from more, and guessing fewer is feasible.
const MinFingerprintKeyBytes = 32

// LoadFingerprintKey reads a fingerprint key from the file at path
// (--fingerprint-key-file). The file's bytes are the key, as they are (a
// trailing newline is part of it): at least MinFingerprintKeyBytes, for
// instance made with "head -c 32 /dev/urandom". A file its group or others
// may read or write is refused, because whoever reads the key can confirm
// guessed tokens and plans against the audit log.
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
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: --fingerprint-key-file %s has mode %04o: the key is a secret, "+
			"readable by its owner only (chmod 600 %s)", ErrConfig, path, perm, path)
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

// RedactURL hides the password of a database URL, for logs.
func RedactURL(auditLog string) string {
	if !IsDatabaseURL(auditLog) {
		return auditLog
	}
	u, err := url.Parse(auditLog)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	return u.Redacted()
}
