package audit

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/sumdb/tlog"
)

// ErrIntegrity: the store no longer holds what the log wrote or signed:
// records, the chain's head, the tree or a checkpoint were changed,
// removed or rolled back behind the log's back (an operator's edit of the
// database or the log directory, a restored backup), or a witness holds a
// tree the log does not extend. The log halts on it: it refuses new
// plans, reports itself unhealthy and signs nothing until it is restarted,
// which an operator does after finding out what happened. An ErrIntegrity
// is also an ErrDataLoss, for readers.
var ErrIntegrity error = integrityError{}

type integrityError struct{}

func (integrityError) Error() string { return "the audit log was changed behind the server's back" }

// Is makes every ErrIntegrity an ErrDataLoss too.
func (integrityError) Is(target error) bool { return target == ErrDataLoss }

// guardedStore is the log's view of its store: once the log halted
// (Log.halt), every append and ping fails with the halt's cause, so that
// the health supervisor never turns the log healthy again, however the
// storage answers; an append that finds the store changed (an error
// wrapping ErrIntegrity) halts the log, and so does a read that finds a
// record deleted. Reads go on after a halt: what the store holds may
// still be listed and proven.
type guardedStore struct {
	Store
	log *Log
}

// Append appends unless the log halted, and halts it when the store says
// it was changed under it.
func (g *guardedStore) Append(ctx context.Context, durable bool, build func(Head) ([]Record, error)) error {
	if err := g.log.haltErr(); err != nil {
		return err
	}
	err := g.Store.Append(ctx, durable, build)
	if errors.Is(err, ErrIntegrity) {
		g.log.halt(err)
		return g.log.haltErr()
	}
	return err
}

// Ping fails for good once the log halted. The store is still pinged: a
// store shared by replicas counts it as this process's heartbeat, which
// keeps the other replicas from closing its running executions.
func (g *guardedStore) Ping(ctx context.Context) error {
	err := g.Store.Ping(ctx)
	if herr := g.log.haltErr(); herr != nil {
		return herr
	}
	if errors.Is(err, ErrIntegrity) {
		g.log.halt(err)
		return g.log.haltErr()
	}
	return err
}

// Halted returns why the log halted (an error wrapping ErrIntegrity), or
// nil while it has not: once halted, it refuses plans and signs nothing
// until a restart.
func (l *Log) Halted() error { return l.haltErr() }

func (l *Log) haltErr() error {
	if p := l.haltCause.Load(); p != nil {
		return *p
	}
	return nil
}

// List lists, and halts the log when the listing finds a record deleted
// or replaced.
func (g *guardedStore) List(ctx context.Context, q Query) (Page, error) {
	p, err := g.Store.List(ctx, q)
	if errors.Is(err, ErrIntegrity) {
		g.log.halt(err)
	}
	return p, err
}

// ReadHashes reads, and halts the log when a record that holds a hash of
// the durable tree was deleted.
func (g *guardedStore) ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	h, err := g.Store.ReadHashes(ctx, indexes)
	if errors.Is(err, ErrIntegrity) {
		g.log.halt(err)
	}
	return h, err
}

// halt stops the log for good: the first cause is kept, the log turns
// unhealthy (ErrUnavailable for every new plan, health NOT_SERVING) and
// one ERROR line names what differs: the health callback's, or, when the
// log was unhealthy already (a database outage) and so reports no change,
// the log's own.
func (l *Log) halt(cause error) {
	if !strings.Contains(cause.Error(), ErrIntegrity.Error()) {
		// Every halt's line says what it is, for operators to grep.
		cause = fmt.Errorf("%w: %w", ErrIntegrity, cause)
	}
	err := fmt.Errorf("%w: %w; refusing plans and signing nothing until an operator restarts Stage-4", ErrUnavailable, cause)
	if !l.haltCause.CompareAndSwap(nil, &err) {
		return
	}
	l.metrics.halted.Set(1)
	reported := l.health.Err() == nil && l.cfg.onHealth != nil
	l.health.fail(cause)
	if !reported && l.cfg.logger != nil {
		l.cfg.logger.Error("audit log integrity broken; refusing plans and signing nothing until an operator restarts Stage-4", "error", cause)
	}
}
