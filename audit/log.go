package audit

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// File is the storage of a Log; *os.File implements it. The log appends with
// Write (the file is opened with O_APPEND), makes writes durable with Sync,
// reads with ReadAt and cuts a crash's incomplete last line with Truncate.
type File interface {
	io.Writer
	io.ReaderAt
	Sync() error
	Truncate(size int64) error
	Close() error
}

// Recovery is what Open repaired after an unclean stop.
type Recovery struct {
	// TruncatedBytes is the length of the incomplete last line that was cut
	// off: a record being written when the process stopped, never
	// acknowledged.
	TruncatedBytes int64
	// Interrupted lists, in log order, the executions that had no terminal
	// event and were closed with an EXECUTION_FAILED event of phase
	// "interrupted".
	Interrupted []string
}

// Log is an append-only, hash-chained audit log in a local file. It keeps
// only the chain's head in memory; List reads the file. It is safe for
// concurrent use.
type Log struct {
	file      File
	onFailure func(error)
	metrics   *metrics
	recovery  Recovery

	requests chan *request
	closing  chan struct{}
	exited   chan struct{}
	closeMu  sync.Once
	closeErr error

	failed atomic.Pointer[error]
	// size is the length of the durable records; List never reads past it.
	size atomic.Int64

	// Owned by the writer goroutine.
	seq     uint64
	prev    [sha256.Size]byte
	buf     []byte
	written int64 // file length, durable or not
}

// maxBatch bounds one group commit; it is also the queue length.
const maxBatch = 1024

// maxFieldsBytes leaves room within MaxRecordBytes for the members the
// writer adds: sequence, time and the two hashes.
const maxFieldsBytes = MaxRecordBytes - 512

type request struct {
	fields []byte
	sync   bool // answer only once fsynced
	done   chan result
}

type result struct {
	seq        uint64
	time       time.Time
	prev, hash [sha256.Size]byte
	err        error
}

// Open opens or creates the log at path, verifies the whole chain and
// repairs the traces of a crash: an incomplete last line is cut off, and
// every execution without a terminal event gets an EXECUTION_FAILED event
// with phase "interrupted". Any other damage is refused with a *ChainError
// naming the first bad sequence, because appending to a broken chain would
// hide the break.
func Open(path string, opts ...Option) (*Log, error) {
	var c logConfig
	for _, o := range opts {
		o(&c)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	// A new file's directory entry is durable only once the directory is.
	if err := syncDir(filepath.Dir(path)); err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	var file File = f
	if c.wrapFile != nil {
		file = c.wrapFile(f)
	}
	l, err := start(file, &c)
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	return l, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// openExecution is an execution seen at start-up without a terminal event.
type openExecution struct {
	seq            uint64
	id             string
	planID, userID string
	last           stage4v1.AuditEventType
}

func start(file File, c *logConfig) (*Log, error) {
	open := map[string]*openExecution{}
	res, err := Verify(io.NewSectionReader(file, 0, math.MaxInt64), func(vc *verifyConfig) {
		vc.onRecord = func(ev *stage4v1.AuditEvent) { trackOpen(open, ev) }
	})
	if err != nil {
		return nil, err
	}
	if res.TrailingBytes > 0 {
		if err := file.Truncate(res.Bytes); err != nil {
			return nil, fmt.Errorf("cut incomplete last line: %w", err)
		}
		if err := file.Sync(); err != nil {
			return nil, fmt.Errorf("cut incomplete last line: %w", err)
		}
	}
	l := &Log{
		file:      file,
		onFailure: c.onFailure,
		metrics:   newMetrics(),
		recovery:  Recovery{TruncatedBytes: res.TrailingBytes},
		requests:  make(chan *request, maxBatch),
		closing:   make(chan struct{}),
		exited:    make(chan struct{}),
		seq:       res.Records,
	}
	// Verify has checked that LastHash is "sha256:" and 64 hex digits.
	if _, err := hex.Decode(l.prev[:], []byte(res.LastHash[len(hashPrefix):])); err != nil {
		return nil, fmt.Errorf("read last hash: %w", err)
	}
	l.size.Store(res.Bytes)
	l.written = res.Bytes
	go l.run()
	if err := l.closeInterrupted(open); err != nil {
		l.stop()
		return nil, err
	}
	if c.registerer != nil {
		if err := l.metrics.register(c.registerer); err != nil {
			l.stop()
			return nil, fmt.Errorf("register audit metrics: %w", err)
		}
	}
	return l, nil
}

func trackOpen(open map[string]*openExecution, ev *stage4v1.AuditEvent) {
	id := ev.GetExecutionId()
	switch ev.GetType() {
	case stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED, stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED:
		delete(open, id)
	default:
		if e, ok := open[id]; ok {
			e.last = ev.GetType()
			return
		}
		open[id] = &openExecution{seq: ev.GetSequence(), id: id, planID: ev.GetPlanId(), userID: ev.GetUserId(), last: ev.GetType()}
	}
}

// closeInterrupted gives each execution the terminal event the crash
// prevented, in log order, so that every execution ends exactly once.
func (l *Log) closeInterrupted(open map[string]*openExecution) error {
	list := make([]*openExecution, 0, len(open))
	for _, e := range open {
		list = append(list, e)
	}
	slices.SortFunc(list, func(a, b *openExecution) int { return cmp.Compare(a.seq, b.seq) })
	for _, e := range list {
		_, err := l.Append(context.Background(), &stage4v1.AuditEvent{
			Type:        stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED,
			ExecutionId: e.id,
			PlanId:      e.planID,
			UserId:      e.userID,
			Details: &structpb.Struct{Fields: map[string]*structpb.Value{
				"phase":           structpb.NewStringValue(PhaseInterrupted),
				"message":         structpb.NewStringValue("Stage-4 stopped before the execution's terminal event was recorded"),
				"last_event_type": structpb.NewStringValue(e.last.String()),
			}},
		})
		if err != nil {
			return fmt.Errorf("close interrupted execution %s: %w", e.id, err)
		}
		l.recovery.Interrupted = append(l.recovery.Interrupted, e.id)
	}
	return nil
}

// Recovery reports what Open repaired.
func (l *Log) Recovery() Recovery { return l.recovery }

// Err returns why the log failed, or nil while it is healthy. A failed log
// stays failed: every later Append returns this error.
func (l *Log) Err() error {
	if p := l.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// Append adds ev to the log and returns the record as written, with
// sequence, time, previous_hash and hash set. It returns only once the
// record is written and fsynced, or with an error if it is not known to be.
// ev is not modified; the returned event shares ev.Details, which must not
// change during the call.
// Concurrent calls share one write and one fsync. ctx only bounds the wait
// for a place in the queue: once queued, the record's fate is awaited, so
// that a caller never abandons a record that may still be written.
func (l *Log) Append(ctx context.Context, ev *stage4v1.AuditEvent) (*stage4v1.AuditEvent, error) {
	return l.appendEvent(ctx, ev, true)
}

// AppendUnsynced queues ev and returns without waiting for it to be
// written. The writer writes queued records in order, and the next Append
// (from any goroutine queued after this call) returns only once this
// record is written and fsynced too, or fails if it could not be: a write
// or fsync error fails the log, and a failed log fails every later Append.
// An execution uses it for PLAN_RECEIVED, which is always followed by a
// durable event before anything else happens, so that each execution pays
// for two fsyncs (before Stage-3 and before the reply) instead of three and
// for one hand-over to the writer less. It returns an error only when the
// record could not be queued (bad event, failed or closed log).
func (l *Log) AppendUnsynced(ctx context.Context, ev *stage4v1.AuditEvent) error {
	_, err := l.append(ctx, ev, false)
	if err != nil {
		l.metrics.failures.Inc()
	}
	return err
}

func (l *Log) appendEvent(ctx context.Context, ev *stage4v1.AuditEvent, sync bool) (*stage4v1.AuditEvent, error) {
	res, err := l.append(ctx, ev, sync)
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

func (l *Log) append(ctx context.Context, ev *stage4v1.AuditEvent, sync bool) (result, error) {
	if err := l.Err(); err != nil {
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
	r := &request{fields: fields, sync: sync, done: make(chan result, 1)}
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
// requests, and commits them with one write and one fsync, so that the
// fsync cost is shared by all concurrent callers.
func (l *Log) run() {
	defer close(l.exited)
	batch := make([]*request, 0, maxBatch)
	for {
		select {
		case r := <-l.requests:
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

// keepBufBytes bounds the write buffer kept between batches, so that one
// burst of large records does not pin memory for the life of the process.
const keepBufBytes = 4 << 20

// commit writes and fsyncs batch and answers every request in it.
func (l *Log) commit(batch []*request) {
	if err := l.Err(); err != nil {
		answer(batch, func(int) result { return result{err: err} })
		return
	}
	now := time.Now()
	buf, seq, prev := l.buf[:0], l.seq, l.prev
	results := make([]result, len(batch))
	sync := false
	for i, r := range batch {
		sync = sync || r.sync
		seq++
		results[i] = result{seq: seq, time: now, prev: prev}
		buf, prev = appendRecord(buf, seq, now, r.fields, &prev)
		results[i].hash = prev
	}
	if cap(buf) <= keepBufBytes {
		l.buf = buf
	} else {
		l.buf = nil
	}
	if err := l.writeAndSync(buf, sync); err != nil {
		err = fmt.Errorf("audit log failed: %w", err)
		l.failed.Store(&err)
		if l.onFailure != nil {
			l.onFailure(err)
		}
		answer(batch, func(int) result { return result{err: err} })
		return
	}
	l.seq, l.prev = seq, prev
	l.written += int64(len(buf))
	if sync {
		l.size.Store(l.written) // the fsync covered every earlier write too
	}
	l.metrics.appends.Add(float64(len(batch)))
	l.metrics.batchSize.Observe(float64(len(batch)))
	answer(batch, func(i int) result { return results[i] })
}

// writeAndSync writes buf and, when sync is set, fsyncs the file, which
// makes every earlier unsynced write durable too.
func (l *Log) writeAndSync(buf []byte, sync bool) error {
	if _, err := l.file.Write(buf); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !sync {
		return nil
	}
	began := time.Now()
	if err := l.file.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	l.metrics.fsyncSeconds.Observe(time.Since(began).Seconds())
	return nil
}

func answer(batch []*request, res func(i int) result) {
	for i, r := range batch {
		r.done <- res(i)
	}
}

// Close stops accepting events, writes those already queued, stops the
// writer and closes the file. It is safe to call more than once.
func (l *Log) Close() error {
	l.closeMu.Do(func() {
		l.stop()
		// The last records may have been written by AppendUnsynced alone.
		if l.Err() == nil {
			l.closeErr = l.file.Sync()
		}
		l.closeErr = errors.Join(l.closeErr, l.file.Close())
	})
	return l.closeErr
}

// stop lets the writer commit what is queued and waits for it to exit.
func (l *Log) stop() {
	close(l.closing)
	<-l.exited
}
