package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	"github.com/stage4/stage4/audit/pgstore"
)

// IsDatabaseURL reports whether an --audit-log value names a PostgreSQL
// database rather than a file.
func IsDatabaseURL(auditLog string) bool { return pgstore.IsURL(auditLog) }

// OpenStore opens the audit store that cfg.AuditLog names: a PostgreSQL
// database for a postgres:// or postgresql:// URL, shared with every other
// replica that names it, else a local file.
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
	s, err := filestore.Open(auditLog)
	if err != nil {
		return nil, err // already says "open audit log"
	}
	if rec := s.Recovery(); rec.TruncatedBytes > 0 {
		logger.Warn("audit log repaired after an unclean stop: cut an incomplete last line",
			"truncated_bytes", rec.TruncatedBytes)
	}
	return s, nil
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
