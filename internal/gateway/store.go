package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
)

// IsDatabaseURL reports whether an --audit-log value names a PostgreSQL
// database rather than a file.
func IsDatabaseURL(auditLog string) bool {
	return strings.HasPrefix(auditLog, "postgres://") || strings.HasPrefix(auditLog, "postgresql://")
}

// OpenStore opens the audit store that auditLog names: a PostgreSQL
// database for a postgres:// or postgresql:// URL, else a local file.
func OpenStore(ctx context.Context, auditLog string, logger *slog.Logger) (audit.Store, error) {
	if IsDatabaseURL(auditLog) {
		return nil, fmt.Errorf("%w: the PostgreSQL audit store is not built into this binary yet", ErrConfig)
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
