package pgstore

import (
	"context"

	"github.com/stage4/stage4/audit"
)

// The store of postgres:// and postgresql:// locations (any case).
func init() { audit.Register(driver{}, "postgres", "postgresql") }

type driver struct{}

// connString is the URL as pgx reads it: pgx wants the scheme in lower
// case, which the location has.
func connString(loc audit.Location) string { return loc.URL.String() }

// Open connects and registers this process as a replica named
// cfg.ReplicaName.
func (driver) Open(ctx context.Context, loc audit.Location, cfg audit.OpenConfig) (audit.Store, error) {
	var opts []Option
	if cfg.ReplicaName != "" {
		opts = append(opts, WithReplicaName(cfg.ReplicaName))
	}
	s, err := Open(ctx, connString(loc), opts...)
	if err != nil {
		return nil, err // Open's error redacts the URL
	}
	if cfg.Logger != nil {
		cfg.Logger.Info("audit store: PostgreSQL", "audit_log", loc.Redacted(), "replica_name", s.ReplicaName(), "instance_id", s.InstanceID())
		// A warning, not a refusal: a pod restarted under its name may find
		// its predecessor's session still open on the database for a while,
		// and must not crash-loop until the database notices.
		if s.NameTaken() {
			cfg.Logger.Warn("another live process holds this replica name: give every replica its own --replica-name "+
				"(two of one name do not take each other's executions, but only one closes its predecessor's at once); "+
				"if the process of this name just died, the database has not ended its session yet",
				"replica_name", s.ReplicaName())
		}
	}
	return s, nil
}

// OpenReader connects without touching the schema.
func (driver) OpenReader(ctx context.Context, loc audit.Location) (audit.LogReader, error) {
	return OpenReader(ctx, connString(loc))
}

// Verify checks the whole log in one snapshot (Verify). Rows have no
// byte offsets and no progress is reported.
func (driver) Verify(ctx context.Context, loc audit.Location, cfg audit.VerifyConfig) (audit.VerifyReport, error) {
	res, err := Verify(ctx, connString(loc), cfg.Options...)
	return audit.VerifyReport{Result: res}, err
}
