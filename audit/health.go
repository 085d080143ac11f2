package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// health is the log's view of whether its store can record: nil while it
// can, else why not. Failed appends turn it unhealthy at once; the
// supervisor's pings turn it either way.
//
// Every failure advances a generation, and a ping's success is applied
// only if no failure was recorded since the ping began: a ping that
// started before a batch failed and answers after it must not mark the
// store healthy again (its answer is older than the failure).
type health struct {
	mu       sync.Mutex // orders transitions and their callbacks
	err      atomic.Pointer[error]
	gen      uint64 // failures recorded so far; guarded by mu
	onChange func(error)
}

func newHealth(onChange func(error)) *health { return &health{onChange: onChange} }

// Err returns why appends are refused now, or nil.
func (h *health) Err() error {
	if p := h.err.Load(); p != nil {
		return *p
	}
	return nil
}

// generation is the number of failures recorded so far: what a ping
// notes when it begins.
func (h *health) generation() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gen
}

// fail records that the store cannot record now.
func (h *health) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failLocked(err)
}

func (h *health) failLocked(err error) {
	was := h.Err()
	if was != nil && errors.Is(was, ErrClosed) {
		return
	}
	h.gen++
	err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	h.err.Store(&err)
	if was == nil && h.onChange != nil {
		h.onChange(err)
	}
}

// pinged applies the result of a ping that began at generation gen: a
// failure always, a success only if nothing failed since gen, and then
// only after recover (if not nil) succeeded, so that whatever must be
// written before new executions are taken is written first (recover runs
// while the log still refuses them, and may append: it runs without the
// transition lock, and a failure while it runs keeps the log unhealthy).
// It reports whether the log is healthy afterwards.
func (h *health) pinged(gen uint64, err error, recover func() error) bool {
	h.mu.Lock()
	if err != nil {
		h.failLocked(err)
		h.mu.Unlock()
		return false
	}
	was := h.Err()
	switch {
	case was == nil:
		h.mu.Unlock()
		return true
	case h.gen != gen || errors.Is(was, ErrClosed):
		h.mu.Unlock()
		return false // a failure newer than the ping, or closed
	}
	h.mu.Unlock()
	if recover != nil {
		if err := recover(); err != nil {
			h.fail(err)
			return false
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen != gen || h.Err() == nil || errors.Is(h.Err(), ErrClosed) {
		return h.Err() == nil
	}
	h.err.Store(nil)
	if h.onChange != nil {
		h.onChange(nil)
	}
	return true
}

// recover is what the log does when its store is found healthy again,
// before it takes new executions: it writes the terminal events that the
// outage kept it from writing (writeLate).
func (l *Log) recover() error {
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.appendTimeout)
	defer cancel()
	return l.writeLate(ctx)
}

// close makes every later append fail with ErrClosed.
func (h *health) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	closed := ErrClosed
	h.err.Store(&closed)
}

// supervise pings the store and sweeps interrupted executions until
// Close. A ping is bounded by the ping interval, so that a store that
// hangs turns the log unhealthy within two intervals.
func (l *Log) supervise() {
	defer close(l.watched)
	ping := time.NewTicker(l.cfg.pingInterval)
	defer ping.Stop()
	lastSweep := time.Now()
	for {
		select {
		case <-l.closing:
			return
		case <-ping.C:
		}
		gen := l.health.generation()
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.pingInterval)
		err := l.store.Ping(ctx)
		cancel()
		if !l.health.pinged(gen, err, l.recover) {
			continue
		}
		// A late event handed over just after the recovery above ran.
		if l.hasLate() {
			if err := l.recover(); err != nil && l.cfg.logger != nil {
				l.cfg.logger.Warn("recording late terminal events failed; will retry", "error", err)
			}
		}
		if time.Since(lastSweep) < l.cfg.sweepInterval {
			continue
		}
		lastSweep = time.Now()
		l.sweeper.sweep()
	}
}
