package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stage4/stage4/audit"
)

// Store is an audit.Store in a PostgreSQL database that several replicas
// share. It is safe for concurrent use, although the log calls Append from
// one goroutine at a time.
type Store struct {
	pool     *pgxpool.Pool
	cfg      config
	instance string // random, made at Open: this process
	logID    [logIDLen]byte
	closed   atomic.Bool

	// nameMu guards nameConn, a connection of its own that holds the
	// advisory lock on the replica name while it is open.
	nameMu   sync.Mutex
	nameConn *pgx.Conn
	connCfg  *pgx.ConnConfig
	// nameTaken: the last attempt found the name's lock held by another
	// session (see NameTaken).
	nameTaken atomic.Bool

	// lastMu guards last, the last head this replica read under the
	// head's lock or committed: the head must never go back from it
	// (see integrity.go).
	lastMu sync.Mutex
	last   audit.Head

	// claims feeds the claim batcher (requests.go), which runs from Open
	// until claimsStop is closed and closes claimsDone when it returns; it
	// has a connection of its own in claimPool.
	claimPool  *pgxpool.Pool
	claims     chan *claimCall
	claimsStop chan struct{}
	claimsDone chan struct{}
}

var _ audit.Store = (*Store)(nil)

// Open connects to the database at rawURL (postgres:// or postgresql://),
// creates or migrates the schema and registers this process as a replica.
// Pool and TLS settings are URL parameters (see the package doc). Open
// fails with an error wrapping audit.ErrUnavailable when the database
// cannot be reached.
func Open(ctx context.Context, rawURL string, opts ...Option) (*Store, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.name == "" {
		cfg.name = defaultName()
	}
	if !IsURL(rawURL) {
		return nil, errors.New("open audit store: the URL must start with postgres:// or postgresql://")
	}
	pcfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("open audit store: %w", err)
	}
	applyDefaults(pcfg.ConnConfig)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("open audit store: %w", err)
	}
	claimPool, err := pgxpool.NewWithConfig(ctx, claimPoolConfig(pcfg))
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("open audit store: %w", err)
	}
	s := &Store{pool: pool, claimPool: claimPool, cfg: cfg, instance: randomID(), connCfg: pcfg.ConnConfig,
		claims: make(chan *claimCall, maxClaimBatch), claimsStop: make(chan struct{}), claimsDone: make(chan struct{})}
	if err := s.start(ctx); err != nil {
		pool.Close()
		claimPool.Close()
		return nil, fmt.Errorf("open audit store %s: %w", audit.RedactLocation(rawURL), err)
	}
	go s.runClaims()
	return s, nil
}

func (s *Store) start(ctx context.Context) error {
	logID, err := migrate(ctx, s.pool)
	if err != nil {
		return err
	}
	s.logID = logID
	if err := s.heartbeat(ctx); err != nil {
		return err
	}
	s.lockName(ctx)
	return nil
}

// IsURL reports whether s names a PostgreSQL database rather than a file:
// it starts with postgres:// or postgresql://.
func IsURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// applyDefaults sets what the URL did not: a bound on connecting, so that
// an unreachable host fails Append instead of hanging it; an end to
// sessions left idle inside a transaction, so that a replica that froze
// while holding the head's row lock blocks the others for seconds, not
// until TCP gives up; and a name in pg_stat_activity.
func applyDefaults(c *pgx.ConnConfig) {
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if _, ok := c.RuntimeParams["idle_in_transaction_session_timeout"]; !ok {
		c.RuntimeParams["idle_in_transaction_session_timeout"] = "5s"
	}
	if _, ok := c.RuntimeParams["application_name"]; !ok {
		c.RuntimeParams["application_name"] = "stage4"
	}
}

// ReplicaName is the name this replica owns its executions under.
func (s *Store) ReplicaName() string { return s.cfg.name }

// InstanceID is the random id of this process, made at Open.
func (s *Store) InstanceID() string { return s.instance }

// Ping records this replica's heartbeat, which tells the other replicas
// that its open executions are still being run, and so reports whether
// the database takes writes now; and it checks the head as Append does
// (see integrity.go). It is bounded by 2 s.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return audit.ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.pingTimeout)
	defer cancel()
	if err := s.heartbeat(ctx); err != nil {
		return fmt.Errorf("ping audit store: %w", err)
	}
	if err := s.checkHead(ctx); err != nil {
		return fmt.Errorf("ping audit store: %w", err)
	}
	return nil
}

func (s *Store) heartbeat(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, upsertHeartbeat, s.instance, s.cfg.name)
	return s.dbError(err)
}

// upsertHeartbeat records that instance $1 of replica name $2 is alive.
const upsertHeartbeat = `INSERT INTO audit_replicas (instance_id, name, started_at, last_seen)
	VALUES ($1, $2, now(), now())
	ON CONFLICT (instance_id) DO UPDATE SET last_seen = now()`

// FingerprintKey returns the log's secret key for keyed fingerprints, made
// at random with the schema and kept in audit_meta, so that every replica
// of the database computes the same plan_id for the same plan. Whoever can
// read audit_meta holds it: grant readers of the audit tables no access
// to that table.
func (s *Store) FingerprintKey(ctx context.Context) ([]byte, error) {
	if s.closed.Load() {
		return nil, audit.ErrClosed
	}
	var key []byte
	if err := s.pool.QueryRow(ctx, "SELECT fingerprint_key FROM audit_meta WHERE id = 1").Scan(&key); err != nil {
		return nil, fmt.Errorf("read fingerprint key: %w", s.dbError(err))
	}
	if len(key) != fingerprintKeyLen {
		return nil, fmt.Errorf("read fingerprint key: audit_meta.fingerprint_key has %d bytes, want %d", len(key), fingerprintKeyLen)
	}
	return key, nil
}

// Close releases the name, removes this replica's heartbeat (its open
// executions, if any are left, are then anybody's to close once their
// deadline passes) and closes the pool. Appends after Close fail with
// audit.ErrClosed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.claimsStop)
	<-s.claimsDone
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.pingTimeout)
	defer cancel()
	_, err := s.pool.Exec(ctx, `DELETE FROM audit_replicas WHERE instance_id = $1`, s.instance)
	s.nameMu.Lock()
	if s.nameConn != nil {
		// Unlock explicitly: the server drops a closed session's locks
		// only once its backend has exited, after Close returns, and the
		// next process of this name would find the name still taken.
		_, _ = s.nameConn.Exec(ctx, "SELECT pg_advisory_unlock_all()")
		s.nameConn.Close(ctx)
		s.nameConn = nil
	}
	s.nameMu.Unlock()
	s.pool.Close()
	s.claimPool.Close()
	if err != nil {
		// The heartbeat then goes stale on its own: the grace period.
		return fmt.Errorf("close audit store: remove heartbeat: %w", s.dbError(err))
	}
	return nil
}

// lockName tries to hold the advisory lock on the replica name, on a
// connection of its own, unless it already does. The lock proves that no
// other live process uses the name, so that Interrupted may take over the
// open executions of earlier processes of that name at once. A session
// lock is released by the server when the session ends, also when the
// process dies. Failing to get it only costs that fast path.
func (s *Store) lockName(ctx context.Context) bool {
	s.nameMu.Lock()
	defer s.nameMu.Unlock()
	if s.nameConn != nil {
		if _, err := s.nameConn.Exec(ctx, "SELECT 1"); err == nil {
			return true
		}
		s.nameConn.Close(ctx) // lost with its session, and the lock with it
		s.nameConn = nil
	}
	// The log asks about once a second: while another live process holds
	// the name, look it up in pg_locks rather than open a connection each
	// time. (A bigint key shows as classid = high and objid = low half.)
	key := nameLockKey(s.cfg.name)
	var held bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1 AND granted)`,
		int64(uint64(key)>>32), int64(uint64(key)&0xffffffff)).Scan(&held); err != nil || held {
		s.nameTaken.Store(held)
		return false
	}
	conn, err := pgx.ConnectConfig(ctx, s.connCfg)
	if err != nil {
		return false
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&ok); err != nil || !ok {
		conn.Close(ctx)
		s.nameTaken.Store(err == nil) // taken between the look-up and the try
		return false
	}
	s.nameConn = conn
	s.nameTaken.Store(false)
	return true
}

// NameTaken reports whether, at Open or at the last look since, another
// database session held this replica name: a second live replica under
// the same --replica-name, or the session of a process of that name that
// died and that the database has not noticed yet (until TCP keepalive or
// the server's timeouts end it). The store works either way, but without
// the fast path: executions that an earlier process of the name left open
// wait for another replica's sweep instead of being closed at once.
func (s *Store) NameTaken() bool { return s.nameTaken.Load() }

// nameLockKey is the advisory lock key of a replica name. Two names that
// share a key only lose the fast path, never correctness.
func nameLockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("stage4 replica name\x00"))
	h.Write([]byte(name))
	return int64(h.Sum64())
}

// dbError marks errors that mean the database cannot be used now, rather
// than a fault in what was sent, with audit.ErrUnavailable; after a lost
// connection it drops the pool's idle connections, which are likely dead
// too (a restarted server), so that the next call connects afresh.
func (s *Store) dbError(err error) error {
	if err == nil {
		return nil
	}
	// A caller that went away says nothing about the database.
	if !isUnavailable(err) || errors.Is(err, context.Canceled) {
		return err
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Severity == "FATAL" {
		s.pool.Reset()
	}
	return fmt.Errorf("%w: %w", audit.ErrUnavailable, err)
}

// isUnavailable reports whether err means the database cannot take or
// serve requests now: no answer at all (network, timeouts), or a server
// error of the classes for connections (08), operator intervention (57:
// shutdown, cancel), resources (53), system errors (58), a rolled-back
// transaction (40), a lock not available (55P03) or a read-only server
// (25006: a standby after a failover).
func isUnavailable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true
	}
	switch pgErr.Code[:2] {
	case "08", "57", "53", "58", "40":
		return true
	}
	return pgErr.Code == "55P03" || pgErr.Code == "25006"
}

func defaultName() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "stage4"
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	return hex.EncodeToString(b)
}
