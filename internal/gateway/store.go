package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"time"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/audit/segstore"
)

// IsDatabaseURL reports whether an --audit-log value names a PostgreSQL
// database rather than a local log.
func IsDatabaseURL(auditLog string) bool { return pgstore.IsURL(auditLog) }

// isLegacyFileLog reports whether an --audit-log path names a log in one
// file, as Stage-4 kept it before segments (audit/filestore): the path is
// a regular file, or it is missing while the head file that such a log
// leaves beside it (filestore.HeadSuffix) is there. The second case is a
// single-file log that was lost: it goes to filestore too, which refuses
// it (ErrHeadMismatch) instead of starting a new, empty directory there
// without a word.
func isLegacyFileLog(path string) bool {
	if fi, err := os.Stat(path); err == nil {
		return fi.Mode().IsRegular()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false // let the directory store report what is wrong
	}
	fi, err := os.Stat(path + filestore.HeadSuffix)
	return err == nil && fi.Mode().IsRegular()
}

// OpenStore opens the audit store that cfg.AuditLog names: a PostgreSQL
// database for a postgres:// or postgresql:// URL, shared with every other
// replica that names it; a single-file log from before segments when the
// path is a file (see isLegacyFileLog), appended to as it is; else a
// directory of segments (audit/segstore), created when missing. A local
// log that lost records since the last start (see segstore.HeadFile and
// filestore.HeadSuffix) is refused unless cfg.NewAuditLog.
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
	if isLegacyFileLog(auditLog) {
		return openFileStore(cfg, logger)
	}
	return openSegmentStore(cfg, logger)
}

// headMismatchHint completes an ErrHeadMismatch with what the operator
// can do; both local stores return the same error value.
func headMismatchHint(err error, what string) error {
	return fmt.Errorf("%w; %s: restore it, "+
		"or start once with --audit-new-log to begin a new log (the head file is then kept aside)", err, what)
}

// openFileStore opens a single-file log (audit/filestore).
func openFileStore(cfg Config, logger *slog.Logger) (audit.Store, error) {
	logger.Info("the audit log is a single file, from before logs were directories of segments: "+
		"it is appended to as one file, without segments (new logs are directories)",
		"audit_log", cfg.AuditLog)
	var opts []filestore.Option
	if cfg.NewAuditLog {
		opts = append(opts, filestore.WithNewLog())
	}
	s, err := filestore.Open(cfg.AuditLog, opts...)
	if errors.Is(err, filestore.ErrHeadMismatch) {
		return nil, headMismatchHint(err, "the log was removed, renamed, replaced or truncated")
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
	logOldHead(logger, cfg.AuditLog, rec.OldHeadFile, rec.HeadMismatch, rec.Records)
	return s, nil
}

// openSegmentStore opens (or creates) a log directory (audit/segstore)
// and reports what its start-up found and did, and how long it took:
// start-up reads the active segment only, so the time says whether that
// still holds.
func openSegmentStore(cfg Config, logger *slog.Logger) (audit.Store, error) {
	segmentBytes := cfg.AuditSegmentBytes
	if segmentBytes == 0 {
		segmentBytes = segstore.DefaultSegmentBytes
	}
	if segmentBytes < segstore.MinSegmentBytes || segmentBytes > segstore.MaxSegmentBytes {
		return nil, fmt.Errorf("%w: audit segment size %d bytes is not between %d and %d", ErrConfig, segmentBytes, segstore.MinSegmentBytes, segstore.MaxSegmentBytes)
	}
	opts := []segstore.Option{segstore.WithSegmentBytes(segmentBytes)}
	if cfg.NewAuditLog {
		opts = append(opts, segstore.WithNewLog())
	}
	start := time.Now()
	s, err := segstore.Open(cfg.AuditLog, opts...)
	took := time.Since(start)
	if errors.Is(err, segstore.ErrHeadMismatch) {
		return nil, headMismatchHint(err, "the log directory or a segment of it was removed, renamed, replaced or truncated")
	}
	if err != nil {
		return nil, err // already says "open audit log"
	}
	rec := s.Recovery()
	if rec.TruncatedBytes > 0 {
		logger.Warn("audit log repaired after an unclean stop: cut an incomplete last record off the active segment",
			"truncated_bytes", rec.TruncatedBytes)
	}
	if rec.TreeRebuilt != "" {
		logger.Warn("rebuilt the audit log's Merkle tree file from every segment",
			"audit_log", cfg.AuditLog, "reason", rec.TreeRebuilt, "records", rec.Records)
	}
	logOldHead(logger, cfg.AuditLog, rec.OldHeadFile, rec.HeadMismatch, rec.Records)
	if rec.ArchivedSegments > 0 {
		// Not an error: sealed segments may be moved away (docs/AUDIT_LOG.md).
		logger.Info("sealed audit log segments are archived (not in the directory): their records are not listed",
			"audit_log", cfg.AuditLog, "archived_segments", rec.ArchivedSegments)
	}
	if rec.IndexRebuilds > 0 {
		logger.Info("rebuilding the index of sealed audit log segments in the background; listings read those segments meanwhile",
			"audit_log", cfg.AuditLog, "segments", rec.IndexRebuilds)
	}
	logger.Info("audit log opened: a directory of segments",
		"audit_log", cfg.AuditLog,
		"records", rec.Records,
		"sealed_segments", rec.SealedSegments,
		"archived_segments", rec.ArchivedSegments,
		"verified_records", rec.VerifiedRecords,
		"tree_recomputed", rec.TreeRecomputed,
		"index_rebuilds", rec.IndexRebuilds,
		"segment_bytes", segmentBytes,
		// As the call log's grpc.time_ms: milliseconds with a fraction.
		"open_ms", float64(took.Microseconds())/1000)
	return s, nil
}

// logOldHead reports that --audit-new-log set a head file aside.
func logOldHead(logger *slog.Logger, auditLog, oldHeadFile, mismatch string, records uint64) {
	if oldHeadFile == "" {
		return
	}
	logger.Warn("began a new audit log (--audit-new-log) although the log lost records; the old head file is kept aside",
		"audit_log", auditLog, "old_head_file", oldHeadFile, "mismatch", mismatch, "records", records)
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
