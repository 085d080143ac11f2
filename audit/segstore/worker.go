package segstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stage4/stage4/audit"
)

// The store's writes to the disk (appends, seals, the head file, pings'
// checks, the checkpoint file) run on one goroutine of their own, the
// worker, and callers wait for them no longer than their context allows
// (audit.Store's rule 5). A disk that stops answering (an fsync that
// hangs) then holds the worker, never a caller past its deadline, and
// never Ping: while a job the caller gave up on still runs, the store is
// stuck, and every call says so at once. When the disk answers, the store
// takes appends again only if the job succeeded, that is, what it wrote is
// durable; a failed write or sync fails it for good, as always.
//
// The worker is also what serialises appenders: jobs run one at a time,
// in order, so the state of the active segment is the worker's alone.
type worker struct {
	jobs chan *job
	done chan struct{} // the worker's loop has returned

	mu    sync.Mutex // orders a job's end against its waiter giving up
	stuck *job       // a job given up on while it ran, until it ends
	since time.Time  // when stuck began
}

// job states: queued until the worker takes it, running, or abandoned by
// its waiter before it ran (then it never runs).
const (
	jobQueued int32 = iota
	jobRunning
	jobAbandoned
)

type job struct {
	what  string
	run   func() error
	state atomic.Int32
	// guarded by worker.mu
	finished bool
	err      error
	done     chan struct{}
}

// workerQueue is how many jobs may wait for the worker: the log's writer
// has one append at a time, plus a ping and a checkpoint.
const workerQueue = 8

func newWorker() *worker {
	w := &worker{jobs: make(chan *job, workerQueue), done: make(chan struct{})}
	go w.loop()
	return w
}

func (w *worker) loop() {
	defer close(w.done)
	for j := range w.jobs {
		if !j.state.CompareAndSwap(jobQueued, jobRunning) {
			continue // its waiter gave up before it ran
		}
		err := j.run()
		w.mu.Lock()
		j.err, j.finished = err, true
		if w.stuck == j {
			w.stuck = nil
		}
		w.mu.Unlock()
		close(j.done)
	}
}

// stop ends the worker once the queued jobs have run; it does not wait
// for a job that is stuck.
func (w *worker) stop() {
	close(w.jobs)
	w.mu.Lock()
	stuck := w.stuck != nil
	w.mu.Unlock()
	if !stuck {
		<-w.done
	}
}

// errStuck is the error of every call while a job the disk has not
// answered still runs.
func (w *worker) errStuck() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stuck == nil {
		return nil
	}
	return fmt.Errorf("%w: the disk has not answered the audit log's %s for %v", audit.ErrUnavailable,
		w.stuck.what, time.Since(w.since).Round(time.Millisecond))
}

// do runs fn on the worker and waits for it until ctx is done. A job its
// caller gave up on before it ran never runs (audit.ErrUnavailable:
// nothing was written); one given up on while it ran leaves the store
// stuck until it ends, and its caller gets audit.ErrOutcomeUnknown (what
// it wrote may or may not reach the disk).
func (s *Store) do(ctx context.Context, what string, fn func() error) error {
	w := s.worker
	if err := w.errStuck(); err != nil {
		return err
	}
	j := &job{what: what, run: fn, done: make(chan struct{})}
	select {
	case w.jobs <- j:
	case <-ctx.Done():
		return fmt.Errorf("%w: %s: the audit log is busy: %w", audit.ErrUnavailable, what, ctx.Err())
	}
	select {
	case <-j.done:
		return j.err
	case <-ctx.Done():
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case j.finished:
		return j.err
	case j.state.CompareAndSwap(jobQueued, jobAbandoned):
		return fmt.Errorf("%w: %s: the audit log is busy: %w", audit.ErrUnavailable, what, ctx.Err())
	}
	w.stuck, w.since = j, time.Now()
	return fmt.Errorf("%w: %w: %s: the disk has not answered in time (%w); "+
		"the audit log takes nothing until it does, and then only if what was written is durable",
		audit.ErrUnavailable, audit.ErrOutcomeUnknown, what, ctx.Err())
}

// read runs fn, a read of the disk, on a goroutine of its own and waits
// for it until ctx is done, so that a disk that stops answering cannot hold
// a listing or a proof past its caller's deadline. An abandoned read
// finishes on its own; its result is dropped.
func read[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return zero, fmt.Errorf("%w: the disk has not answered a read in time: %w", audit.ErrUnavailable, ctx.Err())
		}
		return zero, ctx.Err()
	}
}
