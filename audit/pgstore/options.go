package pgstore

import (
	"time"
)

// Option configures Open.
type Option func(*config)

type config struct {
	name           string
	grace          time.Duration
	resolveTimeout time.Duration
	pingTimeout    time.Duration
	writeTimeout   time.Duration
	// Knobs that exist to measure the alternatives (see bench_test.go);
	// production code has no way to set them.
	copyFrom       bool // insert records with COPY instead of one INSERT … unnest
	syncNonDurable bool // commit durable=false batches synchronously too
}

func defaultConfig() config {
	return config{
		grace:          30 * time.Second,
		resolveTimeout: 15 * time.Second,
		pingTimeout:    2 * time.Second,
		writeTimeout:   10 * time.Second,
	}
}

// WithReplicaName names this replica; the default is the host name, which
// in Kubernetes is the pod name. Open executions are owned by a name and a
// random instance id made at Open. When a process opens the store under
// the name of a process that stopped (a restart of the same pod, or of a
// StatefulSet member on another node), Interrupted hands it the stopped
// process's open executions at once, without waiting for their deadline.
// Give every concurrently running replica its own name: two live
// processes under one name cannot take each other's executions (the name
// is held with a PostgreSQL advisory lock, see Interrupted), but only the
// first of them gets that fast path.
func WithReplicaName(name string) Option {
	return func(c *config) { c.name = name }
}

// WithGracePeriod sets how long past an open execution's OpenUntil, and
// how long without a heartbeat from its owner, another replica waits
// before it closes the execution as interrupted. It covers clock skew
// between replicas and pauses of the owner. Default 30 s; it must be
// several times the interval at which the log calls Ping.
func WithGracePeriod(d time.Duration) Option {
	return func(c *config) { c.grace = d }
}

// WithResolveTimeout bounds how long Append keeps trying to find out
// whether a batch whose COMMIT lost its connection was stored, before it
// gives up with ErrOutcomeUnknown. Default 15 s: longer than the 5 s after
// which PostgreSQL ends a session left idle inside a transaction (the
// idle_in_transaction_session_timeout the store sets), so that a lost
// transaction has ended by then.
func WithResolveTimeout(d time.Duration) Option {
	return func(c *config) { c.resolveTimeout = d }
}
