package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Log is Stage-4's audit log over a Store. It is made of parts that each
// do one job, so that each can be read, and tested, on its own:
//
//   - the writer (writer.go) encodes events as records, chains them and
//     group-commits concurrent appends into one store batch;
//   - the health supervisor (health.go) pings the store, turns failed
//     appends and pings into the log's health, and reports changes;
//   - the sweeper (sweep.go) closes executions that a stopped process
//     left open, at start and then periodically;
//   - the checkpointer (checkpointer.go) signs checkpoints of the durable
//     tree and refuses to sign a fork of what it signed before;
//   - the reader (reader.go) lists events with page tokens and serves the
//     tree, its hashes and the latest checkpoint.
//
// It keeps no events in memory. It is safe for concurrent use.
type Log struct {
	store   Store
	cfg     logConfig
	metrics *metrics

	health  *health
	writer  *writer
	sweeper *sweeper
	cp      *checkpointer
	tokens  *pageTokens
	late    lateEvents

	// haltCause is why the log halted for good (integrity.go), nil
	// while it has not.
	haltCause atomic.Pointer[error]

	closing  chan struct{}
	watched  chan struct{} // the supervisor's loop has returned
	closeMu  sync.Once
	closeErr error

	recovered []string
}

// New starts a log on store and closes, before it returns, the executions
// that store.Interrupted hands out (left open by a process that stopped).
// The log owns store from then on: Close closes it, also when New fails.
func New(store Store, opts ...Option) (*Log, error) {
	c := defaultLogConfig()
	for _, o := range opts {
		o(&c)
	}
	if len(c.keys) > 0 {
		if err := checkSigningKeys(c.keys); err != nil {
			return nil, errors.Join(err, store.Close())
		}
	}
	key, err := store.FingerprintKey(context.Background())
	if err != nil {
		return nil, errors.Join(fmt.Errorf("audit store key: %w", err), store.Close())
	}
	l := &Log{
		cfg:     c,
		metrics: newMetrics(),
		closing: make(chan struct{}),
		watched: make(chan struct{}),
		tokens:  newPageTokens(key),
	}
	// Everything above the store goes through the guard, which halts the
	// log for good once the store was changed under it.
	l.store = &guardedStore{Store: store, log: l}
	l.health = newHealth(c.onHealth)
	l.writer = newWriter(l.store, l.health, l.metrics, c, l.closing)
	l.sweeper = &sweeper{log: l, logger: c.logger}
	l.cp = newCheckpointer(l, c.keys, c.cosigner)
	go l.writer.run()
	if c.registerer != nil {
		if err := l.metrics.register(c.registerer); err != nil {
			close(l.watched)
			return nil, errors.Join(fmt.Errorf("register audit metrics: %w", err), l.Close())
		}
	}
	closed, err := l.CloseInterrupted(context.Background())
	if err != nil {
		close(l.watched)
		return nil, errors.Join(err, l.Close())
	}
	l.recovered = closed
	go l.supervise()
	return l, nil
}

// Recovered returns the executions that New closed as interrupted, in log
// order.
func (l *Log) Recovered() []string { return l.recovered }

// Err returns why appends are refused now, or nil while the store is
// healthy. It changes when an append fails and when the health
// supervisor's ping of the store succeeds or fails.
func (l *Log) Err() error { return l.health.Err() }

// Admit is Err for a new execution about to append its first event: the
// same answer, and a refusal is counted in stage4_audit_append_failures_total,
// because the execution's append is refused without being attempted. Err
// stays free of that side effect for callers that only look.
func (l *Log) Admit() error {
	err := l.health.Err()
	if err != nil {
		l.metrics.failures.Inc()
	}
	return err
}

// Append adds ev to the log and returns the event as written, with
// Sequence, Time, PreviousHash and Hash set. It returns only once the
// record is durable, or with an error if it is not known to be.
// ev.Details must not change during the call; the returned event shares
// them.
// Concurrent calls share one store batch. ctx only bounds the wait for a
// place in the queue: once queued, the record's fate is awaited, so that a
// caller never abandons a record that may still be stored.
func (l *Log) Append(ctx context.Context, ev Event) (Event, error) {
	res, err := l.writer.append(ctx, &ev, true)
	if err != nil {
		l.metrics.failures.Inc()
		return Event{}, err
	}
	ev.Sequence, ev.Time = res.seq, res.time
	ev.PreviousHash, ev.Hash = formatHash(&res.prev), formatHash(&res.hash)
	return ev, nil
}

// AppendUnsynced queues ev and returns without waiting for it to be
// stored. The writer stores queued records in order, and the next Append
// (from any goroutine queued after this call) returns only once this
// record is durable too, or fails if it could not be stored.
// An execution uses it for PLAN_RECEIVED, which is always followed by a
// durable event before anything else happens, so that each execution pays
// for two durable commits (before Stage-3 and before the reply) instead of
// three. It returns an error only when the record could not be queued
// (bad event, unhealthy or closed log).
func (l *Log) AppendUnsynced(ctx context.Context, ev Event) error {
	_, err := l.writer.append(ctx, &ev, false)
	if err != nil {
		l.metrics.failures.Inc()
	}
	return err
}

// Close stops accepting events, stores those already queued, stops the
// writer and the health supervisor and closes the store. It is safe to
// call more than once.
func (l *Log) Close() error {
	l.closeMu.Do(func() {
		close(l.closing)
		<-l.writer.exited
		<-l.watched
		l.health.close()
		l.closeErr = l.store.Close()
	})
	return l.closeErr
}

// isClosed reports whether Close has begun.
func (l *Log) isClosed() bool {
	select {
	case <-l.closing:
		return true
	default:
		return false
	}
}
