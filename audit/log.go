package audit

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// Log is Stage-4's audit log over a Store: it encodes events as records,
// chains them, group-commits concurrent appends into one store batch,
// watches the store's health and closes executions that a stopped process
// left open. It keeps no events in memory. It is safe for concurrent use.
type Log struct {
	store   Store
	cfg     logConfig
	metrics *metrics

	requests chan *request
	closing  chan struct{}
	exited   chan struct{} // the writer has returned
	watched  chan struct{} // the health monitor has returned
	closeMu  sync.Once
	closeErr error

	// unhealthy holds why appends are refused, nil while the store is
	// healthy. healthMu orders the transitions and their callbacks.
	unhealthy atomic.Pointer[error]
	healthMu  sync.Mutex

	buf  []byte   // the writer's, reused between batches
	edge treeEdge // the writer's, reset from each batch's head

	checkpoints checkpointer

	recovered []string
}

// Recovered returns the executions that New closed as interrupted, in log
// order.
func (l *Log) Recovered() []string { return l.recovered }

// maxBatch bounds one group commit; it is also the queue length.
const maxBatch = 1024

// maxFieldsBytes leaves room within MaxRecordBytes for the members the
// writer adds: sequence, time and the two hashes.
const maxFieldsBytes = MaxRecordBytes - 512

type request struct {
	fields []byte
	ev     *stage4v1.AuditEvent // type and ids, for the store's columns
	sync   bool                 // answer only once durable
	done   chan result
}

type result struct {
	seq        uint64
	time       time.Time
	prev, hash [sha256.Size]byte
	err        error
}

// New starts a log on store and closes, before it returns, the executions
// that store.Interrupted hands out (left open by a process that stopped).
// The log owns store from then on: Close closes it, also when New fails.
func New(store Store, opts ...Option) (*Log, error) {
	c := defaultLogConfig()
	for _, o := range opts {
		o(&c)
	}
	l := &Log{
		store:    store,
		cfg:      c,
		metrics:  newMetrics(),
		requests: make(chan *request, maxBatch),
		closing:  make(chan struct{}),
		exited:   make(chan struct{}),
		watched:  make(chan struct{}),
	}
	go l.run()
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
	go l.watch()
	return l, nil
}

// CloseInterrupted appends EXECUTION_FAILED of phase "interrupted" for each
// execution that the store hands out as left open by a stopped process, in
// log order, and returns their ids. The log calls it at start and then
// periodically (WithSweepInterval); it is exported for tests and tools.
func (l *Log) CloseInterrupted(ctx context.Context) ([]string, error) {
	open, err := l.store.Interrupted(ctx)
	if err != nil {
		return nil, fmt.Errorf("find interrupted executions: %w", err)
	}
	slices.SortFunc(open, func(a, b OpenExecution) int { return cmp.Compare(a.Sequence, b.Sequence) })
	ids := make([]string, 0, len(open))
	for _, e := range open {
		_, err := l.Append(ctx, &stage4v1.AuditEvent{
			Type:        stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED,
			ExecutionId: e.ExecutionID,
			PlanId:      e.PlanID,
			UserId:      e.UserID,
			Details: &structpb.Struct{Fields: map[string]*structpb.Value{
				"phase":           structpb.NewStringValue(PhaseInterrupted),
				"message":         structpb.NewStringValue("Stage-4 stopped before the execution's terminal event was recorded"),
				"last_event_type": structpb.NewStringValue(e.LastType.String()),
			}},
		})
		if err != nil {
			return ids, fmt.Errorf("close interrupted execution %s: %w", e.ExecutionID, err)
		}
		ids = append(ids, e.ExecutionID)
	}
	if len(ids) > 0 && l.cfg.logger != nil {
		l.cfg.logger.Warn("closed executions left open by a stopped Stage-4 process",
			"phase", PhaseInterrupted, "execution_ids", ids)
	}
	return ids, nil
}

// Err returns why appends are refused now, or nil while the store is
// healthy. It changes when an append fails and when the health monitor's
// ping of the store succeeds or fails.
func (l *Log) Err() error {
	if p := l.unhealthy.Load(); p != nil {
		return *p
	}
	return nil
}

// setHealth records err (nil: healthy) and tells the health callback about
// a change.
func (l *Log) setHealth(err error) {
	l.healthMu.Lock()
	defer l.healthMu.Unlock()
	was := l.Err()
	if err == nil {
		if was == nil {
			return
		}
		l.unhealthy.Store(nil)
	} else {
		if was != nil && errors.Is(was, ErrClosed) {
			return
		}
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		l.unhealthy.Store(&err)
		if was != nil {
			return // already unhealthy: no new transition
		}
	}
	if l.cfg.onHealth != nil {
		l.cfg.onHealth(err)
	}
}

// watch pings the store and sweeps interrupted executions until Close.
func (l *Log) watch() {
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
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.pingInterval)
		err := l.store.Ping(ctx)
		cancel()
		l.setHealth(err)
		if err != nil || time.Since(lastSweep) < l.cfg.sweepInterval {
			continue
		}
		lastSweep = time.Now()
		ctx, cancel = context.WithTimeout(context.Background(), l.cfg.appendTimeout)
		if _, err := l.CloseInterrupted(ctx); err != nil && l.cfg.logger != nil {
			l.cfg.logger.Warn("closing interrupted executions failed; will retry", "error", err)
		}
		cancel()
	}
}

// Append adds ev to the log and returns the record as written, with
// sequence, time, previous_hash and hash set. It returns only once the
// record is durable, or with an error if it is not known to be.
// ev is not modified; the returned event shares ev.Details, which must not
// change during the call.
// Concurrent calls share one store batch. ctx only bounds the wait for a
// place in the queue: once queued, the record's fate is awaited, so that a
// caller never abandons a record that may still be stored.
func (l *Log) Append(ctx context.Context, ev *stage4v1.AuditEvent) (*stage4v1.AuditEvent, error) {
	res, err := l.append(ctx, ev, true)
	if err != nil {
		l.metrics.failures.Inc()
		return nil, err
	}
	return &stage4v1.AuditEvent{
		Sequence:     res.seq,
		Time:         timestamppb.New(res.time),
		Type:         ev.GetType(),
		ExecutionId:  ev.GetExecutionId(),
		PlanId:       ev.GetPlanId(),
		UserId:       ev.GetUserId(),
		Details:      ev.GetDetails(),
		PreviousHash: formatHash(&res.prev),
		Hash:         formatHash(&res.hash),
	}, nil
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
func (l *Log) AppendUnsynced(ctx context.Context, ev *stage4v1.AuditEvent) error {
	_, err := l.append(ctx, ev, false)
	if err != nil {
		l.metrics.failures.Inc()
	}
	return err
}

func (l *Log) append(ctx context.Context, ev *stage4v1.AuditEvent, sync bool) (result, error) {
	// An unhealthy log refuses new executions here; a terminal event is
	// queued anyway, for the store to take if it can (see commit).
	if err := l.Err(); err != nil && (!IsTerminal(ev.GetType()) || errors.Is(err, ErrClosed)) {
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
	r := &request{fields: fields, ev: ev, sync: sync, done: make(chan result, 1)}
	select {
	case l.requests <- r:
	case <-l.closing:
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
	case <-l.exited:
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
func (l *Log) run() {
	defer close(l.exited)
	batch := make([]*request, 0, maxBatch)
	for {
		select {
		case r := <-l.requests:
			// Sending r made this goroutine runnable first, ahead of the
			// callers woken with the last batch's answers; yielding once
			// lets them queue their records too, so that one commit (and
			// fsync) takes them all rather than r alone. Measured: stage4
			// at 64 callers went from ~0.3 to ~0.1 commits per ExecutePlan,
			// BenchmarkAppend at 64 writers from ~30 to ~44 records per
			// fsync and from ~1.5 to ~20 per write without fsync.
			runtime.Gosched()
			l.commit(l.gather(append(batch[:0], r)))
		case <-l.closing:
			for {
				batch = l.gather(batch[:0])
				if len(batch) == 0 {
					return
				}
				l.commit(batch)
			}
		}
	}
}

func (l *Log) gather(batch []*request) []*request {
	for len(batch) < maxBatch {
		select {
		case r := <-l.requests:
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

// commit stores batch and answers every request in it.
func (l *Log) commit(batch []*request) {
	if err := l.Err(); err != nil {
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
	now := time.Now()
	sync := false
	for _, r := range batch {
		sync = sync || r.sync
	}
	results := make([]result, len(batch))
	recs := make([]Record, len(batch))
	build := func(head Head) ([]Record, error) {
		// The tree grows from the head's edge alone: no stored hash is read.
		tree := &l.edge
		if err := tree.reset(int64(head.Sequence), head.Tree); err != nil {
			return nil, fmt.Errorf("resume the audit tree: %w", err)
		}
		buf := l.buf[:0]
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
			if !IsTerminal(r.ev.GetType()) {
				recs[i].OpenUntil = now.Add(l.cfg.openFor)
			}
		}
		// Lines alias buf until the store is done with them; a buffer that
		// grew past keepBufBytes is dropped afterwards.
		if cap(buf) <= keepBufBytes {
			l.buf = buf
		} else {
			l.buf = nil
		}
		return recs, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.appendTimeout)
	began := time.Now()
	err := l.store.Append(ctx, sync, build)
	cancel()
	if err != nil {
		err = fmt.Errorf("audit store append: %w", err)
		l.setHealth(err)
		if errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrOutcomeUnknown) {
			if rest := l.retryTerminal(batch); rest != nil {
				batch = rest
			}
		}
		answer(batch, func(int) result { return result{err: err} })
		return
	}
	if sync {
		l.metrics.commitSeconds.Observe(time.Since(began).Seconds())
	}
	l.metrics.appends.Add(float64(len(batch)))
	l.metrics.batchSize.Observe(float64(len(batch)))
	answer(batch, func(i int) result { return results[i] })
}

// retryTerminal commits again, on their own, the terminal events of a
// batch that the store refused as unavailable with nothing stored, when
// the batch mixed them with other events (see commit). It returns the
// requests still to answer with the error, or nil when there was nothing
// to retry.
func (l *Log) retryTerminal(batch []*request) []*request {
	terminal, rest := splitTerminal(batch)
	if len(terminal) == 0 || len(rest) == 0 {
		return nil
	}
	l.commit(terminal)
	return rest
}

// splitTerminal splits batch into the terminal events and the others.
func splitTerminal(batch []*request) (terminal, rest []*request) {
	for _, r := range batch {
		if IsTerminal(r.ev.GetType()) {
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

// List returns a page of events in sequence order. It checks q's page size
// and type, then asks the store.
func (l *Log) List(ctx context.Context, q Query) (Page, error) {
	if q.PageSize < 0 || q.PageSize > MaxPageSize {
		return Page{}, fmt.Errorf("%w: page_size must be between 0 and %d", ErrInvalidQuery, MaxPageSize)
	}
	if q.PageSize == 0 {
		q.PageSize = DefaultPageSize
	}
	if _, ok := stage4v1.AuditEventType_name[int32(q.Type)]; !ok {
		return Page{}, fmt.Errorf("%w: type is not a defined AuditEventType", ErrInvalidQuery)
	}
	select {
	case <-l.closing:
		return Page{}, ErrClosed
	default:
	}
	return l.store.List(ctx, q)
}

// Paging limits of List.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// ErrInvalidQuery: a List query that breaks its rules, such as a page size
// out of range.
var ErrInvalidQuery = errors.New("invalid audit query")

// Close stops accepting events, stores those already queued, stops the
// writer and the health monitor and closes the store. It is safe to call
// more than once.
func (l *Log) Close() error {
	l.closeMu.Do(func() {
		close(l.closing)
		<-l.exited
		<-l.watched
		closed := ErrClosed
		l.unhealthy.Store(&closed)
		l.closeErr = l.store.Close()
	})
	return l.closeErr
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
	signer        note.Signer
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
