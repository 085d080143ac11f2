package audit

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime"
	"time"
)

// writer is the log's single writer: callers queue events, and one
// goroutine takes whatever is queued, up to maxBatch, and stores it as one
// store batch, so that the cost of a durable commit is shared by all
// concurrent callers. It encodes events on the callers' goroutines and
// only chains them (sequence, time, hashes, tree) itself.
type writer struct {
	store   Store
	health  *health
	metrics *metrics
	openFor time.Duration
	timeout time.Duration

	requests chan *request
	closing  <-chan struct{}
	exited   chan struct{} // run has returned

	buf  []byte   // the writer's, reused between batches
	edge treeEdge // the writer's, reset from each batch's head
}

func newWriter(store Store, h *health, m *metrics, c logConfig, closing <-chan struct{}) *writer {
	return &writer{
		store: store, health: h, metrics: m, openFor: c.openFor, timeout: c.appendTimeout,
		requests: make(chan *request, maxBatch), closing: closing, exited: make(chan struct{}),
	}
}

// maxBatch bounds one group commit; it is also the queue length.
const maxBatch = 1024

// maxFieldsBytes leaves room within MaxRecordBytes for the members the
// writer adds: sequence, time and the two hashes.
const maxFieldsBytes = MaxRecordBytes - 512

type request struct {
	fields []byte
	ev     *Event // type and ids, for the store's columns
	sync   bool   // answer only once durable
	done   chan result
	// deadline is when the request's wait for the store ends, set when it
	// is queued: one bound on the whole wait, however many batches it
	// spends queued behind or retried in (see commit).
	deadline time.Time
}

type result struct {
	seq        uint64
	time       time.Time
	prev, hash [sha256.Size]byte
	err        error
}

// append queues ev and, when sync, waits for its record to be durable.
func (w *writer) append(ctx context.Context, ev *Event, sync bool) (result, error) {
	// An unhealthy log refuses new executions here; a terminal event is
	// queued anyway, for the store to take if it can (see commit).
	if err := w.health.Err(); err != nil && (!ev.Type.Terminal() || errors.Is(err, ErrClosed)) {
		return result{}, err
	}
	// A cancelled caller never enqueues, even when the queue has room.
	if err := ctx.Err(); err != nil {
		return result{}, fmt.Errorf("queue audit event: %w", err)
	}
	fields, err := encodeFields(make([]byte, 0, 512), ev)
	if err != nil {
		return result{}, fmt.Errorf("encode audit event: %w", err)
	}
	if len(fields) > maxFieldsBytes {
		return result{}, fmt.Errorf("encode audit event: larger than %d bytes", maxFieldsBytes)
	}
	r := &request{fields: fields, ev: ev, sync: sync, done: make(chan result, 1), deadline: time.Now().Add(w.timeout)}
	select {
	case w.requests <- r:
	case <-w.closing:
		return result{}, ErrClosed
	case <-ctx.Done():
		return result{}, fmt.Errorf("queue audit event: %w", ctx.Err())
	}
	if !sync {
		return result{}, nil // r.done is buffered: the writer never blocks on it
	}
	var res result
	select {
	case res = <-r.done:
	case <-w.exited:
		// The writer answers every request it took before it exits.
		select {
		case res = <-r.done:
		default:
			return result{}, ErrClosed
		}
	}
	return res, res.err
}

// run is the single writer: it takes whatever is queued, up to maxBatch
// requests, and stores them as one batch, so that the cost of a durable
// commit is shared by all concurrent callers.
func (w *writer) run() {
	defer close(w.exited)
	batch := make([]*request, 0, maxBatch)
	for {
		select {
		case r := <-w.requests:
			// Sending r made this goroutine runnable first, ahead of the
			// callers woken with the last batch's answers; yielding once
			// lets them queue their records too, so that one commit (and
			// fsync) takes them all rather than r alone. Measured: stage4
			// at 64 callers went from ~0.3 to ~0.1 commits per ExecutePlan,
			// BenchmarkAppend at 64 writers from ~30 to ~44 records per
			// fsync and from ~1.5 to ~20 per write without fsync.
			runtime.Gosched()
			w.commit(w.gather(append(batch[:0], r)))
		case <-w.closing:
			for {
				batch = w.gather(batch[:0])
				if len(batch) == 0 {
					return
				}
				w.commit(batch)
			}
		}
	}
}

func (w *writer) gather(batch []*request) []*request {
	for len(batch) < maxBatch {
		select {
		case r := <-w.requests:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// keepBufBytes bounds the record buffer kept between batches, so that one
// burst of large records does not pin memory for the life of the process.
const keepBufBytes = 4 << 20

// commit stores batch and answers every request in it. The store gets
// until the earliest deadline of the batch's requests; a request whose
// deadline passed while it waited behind a batch the store took long
// over is refused as it is, without being stored, so that no caller waits
// for the store longer than the append timeout in all.
func (w *writer) commit(batch []*request) {
	now := time.Now()
	if expired, live := splitExpired(batch, now); len(expired) > 0 {
		err := fmt.Errorf("%w: the audit store did not take the record within %v", ErrUnavailable, w.timeout)
		answer(expired, func(int) result { return result{err: err} })
		if len(live) == 0 {
			return
		}
		batch = live
	}
	if err := w.health.Err(); err != nil {
		// New executions are refused at once while the store is
		// unhealthy; the terminal events of executions already running
		// are still offered to it, since it may take them (a log
		// directory on a full disk keeps room for them): their calls
		// then get their result rather than OUTCOME_UNKNOWN.
		terminal, rest := splitTerminal(batch)
		answer(rest, func(int) result { return result{err: err} })
		if len(terminal) == 0 || errors.Is(err, ErrClosed) {
			answer(terminal, func(int) result { return result{err: err} })
			return
		}
		batch = terminal
	}
	sync := false
	deadline := batch[0].deadline
	for _, r := range batch {
		sync = sync || r.sync
		if r.deadline.Before(deadline) {
			deadline = r.deadline
		}
	}
	results := make([]result, len(batch))
	recs := make([]Record, len(batch))
	build := func(head Head) ([]Record, error) {
		// The tree grows from the head's edge alone: no stored hash is read.
		tree := &w.edge
		if err := tree.reset(int64(head.Sequence), head.Tree); err != nil {
			return nil, fmt.Errorf("resume the audit tree: %w", err)
		}
		buf := w.buf[:0]
		for i, r := range batch {
			start := len(buf)
			prev := head.Hash
			head.Sequence++
			buf, head.Hash = appendRecord(buf, head.Sequence, now, r.fields, &prev)
			results[i] = result{seq: head.Sequence, time: now, prev: prev, hash: head.Hash}
			recs[i] = newRecord(nil, head, now, r.ev)
			recs[i].Line = buf[start : len(buf)-1 : len(buf)-1]
			var err error
			if recs[i].TreeHashes, err = tree.add(recs[i].Line); err != nil {
				return nil, fmt.Errorf("audit tree: %w", err)
			}
			if !r.ev.Type.Terminal() {
				recs[i].OpenUntil = now.Add(w.openFor)
			}
		}
		// Lines alias buf until the store is done with them; a buffer that
		// grew past keepBufBytes is dropped afterwards.
		if cap(buf) <= keepBufBytes {
			w.buf = buf
		} else {
			w.buf = nil
		}
		return recs, nil
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	began := time.Now()
	err := w.store.Append(ctx, sync, build)
	cancel()
	if err != nil {
		err = fmt.Errorf("audit store append: %w", err)
		w.health.fail(err)
		if errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrOutcomeUnknown) {
			if rest := w.retryTerminal(batch); rest != nil {
				batch = rest
			}
		}
		answer(batch, func(int) result { return result{err: err} })
		return
	}
	if sync {
		w.metrics.commitSeconds.Observe(time.Since(began).Seconds())
	}
	w.metrics.appends.Add(float64(len(batch)))
	w.metrics.batchSize.Observe(float64(len(batch)))
	answer(batch, func(i int) result { return results[i] })
}

// retryTerminal commits again, on their own, the terminal events of a
// batch that the store refused as unavailable with nothing stored, when
// the batch mixed them with other events (see commit). It returns the
// requests still to answer with the error, or nil when there was nothing
// to retry.
func (w *writer) retryTerminal(batch []*request) []*request {
	terminal, rest := splitTerminal(batch)
	if len(terminal) == 0 || len(rest) == 0 {
		return nil
	}
	w.commit(terminal)
	return rest
}

// splitExpired splits batch into the requests whose deadline has passed
// and the others.
func splitExpired(batch []*request, now time.Time) (expired, live []*request) {
	for i, r := range batch {
		if !r.deadline.After(now) {
			if expired == nil {
				live = append(live, batch[:i]...)
			}
			expired = append(expired, r)
		} else if expired != nil {
			live = append(live, r)
		}
	}
	if expired == nil {
		return nil, batch
	}
	return expired, live
}

// splitTerminal splits batch into the terminal events and the others.
func splitTerminal(batch []*request) (terminal, rest []*request) {
	for _, r := range batch {
		if r.ev.Type.Terminal() {
			terminal = append(terminal, r)
		} else {
			rest = append(rest, r)
		}
	}
	return terminal, rest
}

func answer(batch []*request, res func(i int) result) {
	for i, r := range batch {
		r.done <- res(i)
	}
}
