package pgstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stage4/stage4/audit"
)

// migrationLockKey is the transaction-level advisory lock that serialises
// schema migrations: replicas that start together on an empty database
// take turns, and all but the first find the schema in place. CREATE …
// IF NOT EXISTS alone is not enough: two sessions creating one table at
// once can both pass the check and one fails on the catalog's unique index.
const migrationLockKey int64 = 0x5354_4734_4155_4431 // "STG4AUD1"

// logIDLen is the length of the random id of a log, made with its schema,
// which tells one database's log from another's in messages.
const logIDLen = 8

// fingerprintKeyLen is the length of the log's fingerprint key, made with
// its schema and shared by every replica (see Store.FingerprintKey).
const fingerprintKeyLen = 32

// migrations are applied in order; migrations[i] brings the schema to
// version i+1. Released versions are never edited, only appended to.
var migrations = [...]string{
	// Version 1. docs/AUDIT_LOG.md ("PostgreSQL") describes every table.
	`
CREATE TABLE audit_records (
	sequence     bigint PRIMARY KEY CHECK (sequence > 0),
	time         timestamptz NOT NULL,
	type         text NOT NULL,
	execution_id text NOT NULL,
	plan_id      text NOT NULL,
	user_id      text NOT NULL,
	hash         bytea NOT NULL CHECK (length(hash) = 32),
	record       bytea NOT NULL,
	-- The Merkle tree's stored hashes that this record adds (its leaf hash,
	-- then one per subtree it completes), 32 bytes each, at stored indexes
	-- from tlog.StoredHashCount(sequence - 1): in the record's own row, so
	-- that the tree costs no index and no row of its own.
	tree         bytea NOT NULL CHECK (length(tree) >= 32 AND length(tree) % 32 = 0)
);
-- (column, sequence) serves WHERE column = $1 AND sequence >= $2 ORDER BY
-- sequence: one execution is an index range scan however long the log.
CREATE INDEX audit_records_execution_id ON audit_records (execution_id, sequence);
CREATE INDEX audit_records_plan_id ON audit_records (plan_id, sequence);
CREATE INDEX audit_records_user_id ON audit_records (user_id, sequence);
CREATE INDEX audit_records_type ON audit_records (type, sequence);

-- tree: the right edge of the Merkle tree after sequence leaves, one
-- 32-byte hash per set bit of sequence, largest subtree first.
CREATE TABLE audit_head (
	id       smallint PRIMARY KEY CHECK (id = 1),
	sequence bigint NOT NULL CHECK (sequence >= 0),
	hash     bytea NOT NULL CHECK (length(hash) = 32),
	tree     bytea NOT NULL CHECK (length(tree) % 32 = 0)
);
INSERT INTO audit_head (id, sequence, hash, tree) VALUES (1, 0, decode(repeat('00', 32), 'hex'), ''::bytea);

-- The latest signed checkpoint of any replica: one row, replaced only by
-- a checkpoint of a larger tree.
CREATE TABLE audit_checkpoint (
	id         smallint PRIMARY KEY CHECK (id = 1),
	tree_size  bigint NOT NULL CHECK (tree_size >= 0),
	checkpoint bytea NOT NULL,
	signed_at  timestamptz NOT NULL
);

CREATE TABLE audit_open (
	execution_id   text PRIMARY KEY,
	sequence       bigint NOT NULL,
	plan_id        text NOT NULL,
	user_id        text NOT NULL,
	last_type      text NOT NULL,
	owner_name     text NOT NULL,
	owner_instance text NOT NULL,
	open_until     timestamptz,
	claimed_by     text,
	claimed_at     timestamptz
);

CREATE TABLE audit_replicas (
	instance_id text PRIMARY KEY,
	name        text NOT NULL,
	started_at  timestamptz NOT NULL,
	last_seen   timestamptz NOT NULL
);

CREATE TABLE audit_meta (
	id              smallint PRIMARY KEY CHECK (id = 1),
	log_id          bytea NOT NULL,
	fingerprint_key bytea NOT NULL CHECK (length(fingerprint_key) = 32)
);
`,
	// Version 2: durable_sequence, the last record of the last durable
	// batch, which List does not read past: batches committed without
	// waiting for their WAL flush (PLAN_RECEIVED) are visible before they
	// are durable, and a reader must never see a record a crash can take
	// back. Records already stored were committed before this binary ran,
	// and are taken as durable.
	`
ALTER TABLE audit_head ADD COLUMN durable_sequence bigint NOT NULL DEFAULT 0 CHECK (durable_sequence >= 0);
UPDATE audit_head SET durable_sequence = sequence;
`,
	// Version 3: the log's signing identity and its cosigned checkpoint.
	// audit_signers pins the verifier keys of the checkpoints' signers
	// (one row, replaced only by a process that holds one of them);
	// audit_cosigned keeps the latest checkpoint that witnesses cosigned,
	// which a witnessed log serves, apart from audit_checkpoint, the
	// latest signed one, which every signing must extend.
	`
CREATE TABLE audit_signers (
	id            smallint PRIMARY KEY CHECK (id = 1),
	verifier_keys text[] NOT NULL,
	pinned_at     timestamptz NOT NULL
);
CREATE TABLE audit_cosigned (
	id         smallint PRIMARY KEY CHECK (id = 1),
	tree_size  bigint NOT NULL CHECK (tree_size >= 0),
	checkpoint bytea NOT NULL,
	saved_at   timestamptz NOT NULL
);
`,
	// Version 4: the keys of idempotent executions (request_id) and their
	// replayable answers (requests.go). Beside the records, never in them:
	// an answer holds Stage-3's result, user data that the records must
	// not. The primary key decides which of two replicas that claim one key
	// at once forwards the plan. The partial index finds the running claim
	// of an execution that a terminal record settles; a BRIN index on
	// claimed_at, which grows with the table's physical order and costs
	// next to nothing per insert, serves the purge.
	`
CREATE TABLE audit_requests (
	caller       text NOT NULL,
	request_id   text NOT NULL,
	plan_id      text NOT NULL,
	execution_id text NOT NULL,
	state        text NOT NULL CHECK (state IN ('running', 'done', 'unknown')),
	answer       bytea CHECK (answer IS NULL OR state = 'done'),
	claimed_at   timestamptz NOT NULL,
	open_until   timestamptz NOT NULL,
	PRIMARY KEY (caller, request_id)
);
CREATE INDEX audit_requests_running ON audit_requests (execution_id) WHERE state = 'running';
CREATE INDEX audit_requests_claimed_at ON audit_requests USING brin (claimed_at);
`,
}

// SchemaVersion is the schema version this package creates and uses.
const SchemaVersion = len(migrations)

// migrate brings the database's schema to SchemaVersion in one
// transaction under migrationLockKey and returns the log's id. A database
// whose schema is newer than this binary's is refused: an older binary
// must not write to a layout it does not know.
func migrate(ctx context.Context, pool *pgxpool.Pool) ([logIDLen]byte, error) {
	var logID [logIDLen]byte
	tx, err := pool.Begin(ctx)
	if err != nil {
		return logID, fmt.Errorf("migrate schema: %w", dbErrorNoReset(err))
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
		return logID, fmt.Errorf("migrate schema: %w", dbErrorNoReset(err))
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS audit_schema_version (
		version    integer PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return logID, fmt.Errorf("migrate schema: %w", dbErrorNoReset(err))
	}
	var current int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM audit_schema_version").Scan(&current); err != nil {
		return logID, fmt.Errorf("migrate schema: %w", dbErrorNoReset(err))
	}
	if current > len(migrations) {
		return logID, fmt.Errorf("migrate schema: the database has audit schema version %d, newer than this binary's %d", current, len(migrations))
	}
	for v := current + 1; v <= len(migrations); v++ {
		if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
			return logID, fmt.Errorf("migrate schema to version %d: %w", v, dbErrorNoReset(err))
		}
		if _, err := tx.Exec(ctx, "INSERT INTO audit_schema_version (version) VALUES ($1)", v); err != nil {
			return logID, fmt.Errorf("migrate schema to version %d: %w", v, dbErrorNoReset(err))
		}
	}
	if current == 0 {
		_, _ = rand.Read(logID[:]) // never fails (crypto/rand documents it)
		key := make([]byte, fingerprintKeyLen)
		_, _ = rand.Read(key)
		if _, err := tx.Exec(ctx, "INSERT INTO audit_meta (id, log_id, fingerprint_key) VALUES (1, $1, $2)", logID[:], key); err != nil {
			return logID, fmt.Errorf("migrate schema: %w", dbErrorNoReset(err))
		}
	} else {
		var b []byte
		if err := tx.QueryRow(ctx, "SELECT log_id FROM audit_meta WHERE id = 1").Scan(&b); err != nil {
			return logID, fmt.Errorf("read log id: %w", dbErrorNoReset(err))
		}
		if len(b) != logIDLen {
			return logID, fmt.Errorf("read log id: audit_meta.log_id has %d bytes, want %d", len(b), logIDLen)
		}
		copy(logID[:], b)
	}
	if err := tx.Commit(ctx); err != nil {
		return logID, fmt.Errorf("migrate schema: %w", dbErrorNoReset(err))
	}
	return logID, nil
}

// dbErrorNoReset is Store.dbError for code that runs before a Store exists.
func dbErrorNoReset(err error) error {
	if err == nil || !isUnavailable(err) || errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %w", audit.ErrUnavailable, err)
}
