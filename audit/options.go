package audit

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"
)

// Option configures New.
type Option func(*logConfig)

type promRegisterer = prometheus.Registerer

// WithRegisterer registers the log's metrics (appends, failures, commit
// duration, group-commit batch size) with r. Without it the metrics are
// kept but not exported.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(c *logConfig) { c.registerer = r }
}

// WithHealthFunc calls f with the cause when the log turns unhealthy (an
// append failed, or a ping of the store did) and with nil when a ping
// succeeds again, so that the server can report NOT_SERVING before any
// caller sees the error. A store that failed for good (a local log after a
// failed fsync) never turns healthy again. f is called on the log's own
// goroutines, in the order of the transitions, and must neither block nor
// call Append.
func WithHealthFunc(f func(err error)) Option {
	return func(c *logConfig) { c.onHealth = f }
}

// WithLogger logs what the log does on its own: executions it closes as
// interrupted, sweeps that fail.
func WithLogger(l *slog.Logger) Option {
	return func(c *logConfig) { c.logger = l }
}

// WithOpenFor sets how long after an execution's last non-terminal event
// its writer may still be running it (Record.OpenUntil). The gateway sets
// it to the Stage-3 deadline bound plus a margin; a store shared by
// replicas lets another process close the execution only after that.
// Default DefaultOpenFor.
func WithOpenFor(d time.Duration) Option {
	return func(c *logConfig) { c.openFor = d }
}

// WithAppendTimeout bounds one store batch (default 10s): a store that
// hangs fails the batch, and the log turns unhealthy, instead of holding
// every caller.
func WithAppendTimeout(d time.Duration) Option {
	return func(c *logConfig) { c.appendTimeout = d }
}

// WithPingInterval sets how often the log pings its store (default 1s),
// which bounds how long an outage or a recovery takes to show in health.
func WithPingInterval(d time.Duration) Option {
	return func(c *logConfig) { c.pingInterval = d }
}

// WithSweepInterval sets how often the log asks the store for executions
// to close as interrupted after start-up (default 10s).
func WithSweepInterval(d time.Duration) Option {
	return func(c *logConfig) { c.sweepInterval = d }
}

// WithCheckpointSigner lets the log sign checkpoints with signer (see
// SignCheckpoint); without it, Checkpoint fails with ErrNoSigningKey. The
// store pins the signer's name and key hash; WithCheckpointKeys pins the
// whole verifier key. A nil signer signs nothing.
func WithCheckpointSigner(signer note.Signer) Option {
	return func(c *logConfig) {
		if signer != nil {
			c.keys = []SigningKey{{Signer: signer}}
		}
	}
}

// WithCheckpointKeys lets the log sign checkpoints with keys, every
// checkpoint with each of them (a key rotation's overlap: the old key and
// the new, see docs/AUDIT_LOG.md). The keys must share their name, the
// log's origin. None signs nothing.
func WithCheckpointKeys(keys ...SigningKey) Option {
	return func(c *logConfig) { c.keys = keys }
}

// WithCosigner has every checkpoint the log signs cosigned by witnesses:
// Checkpoint then returns the latest checkpoint that met their quorum, and
// a witness that holds a tree the log does not extend halts the log.
func WithCosigner(cs Cosigner) Option {
	return func(c *logConfig) { c.cosigner = cs }
}

// WithMaxScanned bounds the records (and index entries) that one List
// call lets its store read to fill a page (Query.MaxScanned); past it the
// page ends early with a token to continue. 0, the default, sets no bound.
func WithMaxScanned(n int) Option {
	return func(c *logConfig) { c.maxScanned = n }
}

// logConfig is what Options set.
type logConfig struct {
	registerer    promRegisterer
	onHealth      func(error)
	logger        *slog.Logger
	openFor       time.Duration
	appendTimeout time.Duration
	pingInterval  time.Duration
	sweepInterval time.Duration
	keys          []SigningKey
	cosigner      Cosigner
	maxScanned    int
}

func defaultLogConfig() logConfig {
	return logConfig{
		openFor:       DefaultOpenFor,
		appendTimeout: 10 * time.Second,
		pingInterval:  time.Second,
		sweepInterval: 10 * time.Second,
	}
}

// DefaultOpenFor is how long, by default, an execution may run after its
// last non-terminal event; see WithOpenFor.
const DefaultOpenFor = 5 * time.Minute

// VerifyOption configures Verify.
type VerifyOption func(*verifyConfig)

type verifyConfig struct {
	progress func(bytesRead int64)
	// onRecord sees every good record; the file store uses it to find
	// executions left without a terminal event.
	onRecord func(*Event)
	// onLine sees every good record's bytes; stores use it to recompute
	// tree hashes, verifiers to rehash the log.
	onLine func(seq uint64, line []byte)
	// start, when set, is the head the first record extends.
	start *Head
}

// WithProgress calls f with the number of bytes read so far, about once per
// MiB and once at the end, so that a command line can show progress on
// large files.
func WithProgress(f func(bytesRead int64)) VerifyOption {
	return func(c *verifyConfig) { c.progress = f }
}

// WithRecordFunc calls f with every good record, in order, as Verify or a
// ChainChecker passes it. Several are called in the order given.
func WithRecordFunc(f func(*Event)) VerifyOption {
	return func(c *verifyConfig) {
		if prev := c.onRecord; prev != nil {
			c.onRecord = func(ev *Event) { prev(ev); f(ev) }
			return
		}
		c.onRecord = f
	}
}

// WithLineFunc calls f with the sequence and the bytes (without the
// newline) of every good record, in order, as Verify or a ChainChecker
// passes it. line is valid only during the call. Several are called in
// the order given.
func WithLineFunc(f func(seq uint64, line []byte)) VerifyOption {
	return func(c *verifyConfig) {
		if prev := c.onLine; prev != nil {
			c.onLine = func(seq uint64, line []byte) { prev(seq, line); f(seq, line) }
			return
		}
		c.onLine = f
	}
}

// WithStart makes Verify or a ChainChecker begin after head instead of at
// the genesis: the first record must have head's Sequence plus one and
// head's Hash as its previous_hash. It checks one piece of a log (a
// segment) on its own; what the piece extends is for the caller to trust
// or check.
func WithStart(head Head) VerifyOption {
	return func(c *verifyConfig) { c.start = &head }
}
