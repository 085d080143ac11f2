// Package filestore keeps an audit log in one local file of JSON lines
// (docs/AUDIT_LOG.md): the embedded default store of Stage-4.
//
// The file is fail-closed. A batch is acknowledged only after it is
// written and, when durable, fsynced; the first write or fsync error fails
// the store for good, because after a failed fsync the kernel may have
// dropped the dirty pages and a retry could report success for data that
// is gone. So does a file changed under the store (removed, renamed,
// replaced or truncated), which every append and every Ping checks for.
// One process at a time: Open takes an exclusive lock on the file.
package filestore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/internal/fsutil"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// File is the storage of a Store; *os.File implements it. The store
// appends with Write (the file is opened with O_APPEND), makes writes
// durable with Sync, reads with ReadAt and cuts a crash's incomplete last
// line with Truncate.
type File interface {
	io.Writer
	io.ReaderAt
	Sync() error
	Truncate(size int64) error
	Close() error
}

// Store is an audit.Store in one local file.
type Store struct {
	path     string
	file     File
	ident    os.FileInfo // the open file, for checkIdentity
	recovery Recovery

	failed fsutil.Failure
	// size is the length of the durable records; List never reads past it.
	size atomic.Int64
	// savedHead is the head in the head file (zero: none), guarded by headMu.
	headMu    sync.Mutex
	savedHead audit.Head

	key []byte // the fingerprint key, read or created by Open

	// ioMu guards what Append owns (it is never called concurrently) against
	// Ping and Close.
	ioMu        sync.Mutex
	head        audit.Head
	durableHead audit.Head // the head after the durable records
	written     int64      // file length, durable or not
	wbuf        []byte
	treeState   // the tree file, written under ioMu too

	// durable is durableHead for readers that must not wait for a batch's
	// fsync under ioMu: DurableHead and ReadHashes.
	durable atomic.Pointer[audit.Head]

	checkpoint *fsutil.CheckpointFile

	mu     sync.Mutex // guards open and closed
	open   map[string]*audit.OpenExecution
	closed bool
}

// Recovery is what Open found and repaired after an unclean stop.
type Recovery struct {
	// TruncatedBytes is the length of the incomplete last line that was cut
	// off: a record being written when the process stopped, never
	// acknowledged.
	TruncatedBytes int64
	// Records is the number of records the file held.
	Records uint64
	// OldHeadFile is where WithNewLog set aside a head file that the log
	// did not match, and HeadMismatch what did not match; both are empty
	// when the log matched its head file or had none.
	OldHeadFile  string
	HeadMismatch string
	// TreeRecomputed is the number of records whose tree hashes Open
	// recomputed from the log (see TreeSuffix): 0 after a clean stop, the
	// records of about the last second before a crash, all of them when
	// the tree was rebuilt.
	TreeRecomputed uint64
	// TreeRebuilt says why Open rebuilt the tree file from the whole log
	// (it was missing, or did not match the log); empty when it did not.
	TreeRebuilt string
}

var _ audit.Store = (*Store)(nil)

// Open opens or creates the log file at path, locks it against other
// processes, verifies the whole chain and cuts an incomplete last line (a
// crash's trace). Any other damage is refused with a *audit.ChainError
// naming the first bad sequence, because appending to a broken chain would
// hide the break. Executions left open are handed out by Interrupted.
//
// Beside the log, Open reads or creates the key file (KeySuffix) and
// checks the head file (HeadSuffix): a log that no longer holds the record
// its head file names is refused with ErrHeadMismatch, unless WithNewLog.
// A key file alone does not show that the log held records (a store may
// have been opened and closed without an append), so only the head file
// counts.
func Open(path string, opts ...Option) (*Store, error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	headPath := path + HeadSuffix
	saved, hasHead, mismatch := fsutil.ReadHead(headPath)
	if mismatch != nil {
		mismatch = fmt.Errorf("open audit log %s: %w", path, mismatch)
		if !errors.Is(mismatch, ErrHeadMismatch) {
			return nil, mismatch
		}
	}
	// A log whose head file names records is not created anew, unless
	// told so: it was lost.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	if errors.Is(err, fs.ErrNotExist) {
		if hasHead && saved.Sequence > 0 {
			mismatch = headMismatch(path, saved, fmt.Errorf("%s does not exist", path))
			if !c.newLog {
				return nil, mismatch
			}
		}
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	if err := fsutil.Lock(f, ErrLocked); err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	// A new file's directory entry is durable only once the directory is.
	if err := fsutil.SyncDir(filepath.Dir(path)); err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	ident, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	var file File = f
	if c.wrapFile != nil {
		file = c.wrapFile(f)
	}
	s := &Store{path: path, file: file, ident: ident, open: map[string]*audit.OpenExecution{}}
	if err := s.start(&c, saved, hasHead, mismatch); err != nil {
		file.Close()
		if s.tree != nil {
			s.tree.Close()
		}
		return nil, err
	}
	return s, nil
}

// start reads the key, verifies the log and checks it against its head
// file; mismatch is readHead's complaint about the head file, if any.
func (s *Store) start(c *config, saved audit.Head, hasHead bool, mismatch error) error {
	var err error
	if s.key, err = fsutil.LoadOrCreateKey(s.path + KeySuffix); err != nil {
		return fmt.Errorf("open audit log %s: %w", s.path, err)
	}
	want := uint64(0)
	if hasHead {
		want = saved.Sequence
	}
	// The tree file is trusted up to the head file's record, which load
	// notes on its way through the log.
	var tail trustedTail
	if hasHead && mismatch == nil {
		tail.seq = saved.Sequence
	}
	hashAtWant, err := s.load(want, audit.WithLineFunc(tail.lineFunc()))
	if err != nil {
		return fmt.Errorf("open audit log %s: %w", s.path, err)
	}
	if mismatch == nil && want > 0 {
		if err := checkHead(s.path, saved, s.recovery.Records, hashAtWant); err != nil {
			mismatch = headMismatch(s.path, saved, err)
		}
	}
	if mismatch != nil {
		if !c.newLog {
			return mismatch
		}
		old, err := fsutil.SetAside(s.path + HeadSuffix)
		if err != nil {
			return fmt.Errorf("open audit log %s: set the head file aside for a new log: %w", s.path, err)
		}
		s.recovery.OldHeadFile, s.recovery.HeadMismatch = old, mismatch.Error()
		hasHead = false
		// The tree and the checkpoint were those of the lost log.
		tail = trustedTail{}
		if err := fsutil.SetAsideIfExists(s.path + CheckpointSuffix); err != nil {
			return fmt.Errorf("open audit log %s: set the checkpoint aside for a new log: %w", s.path, err)
		}
	}
	if hasHead {
		s.savedHead = saved
	}
	if err := s.openTree(tail); err != nil {
		return fmt.Errorf("open audit log %s: %w", s.path, err)
	}
	if s.checkpoint, err = fsutil.LoadCheckpointFile(s.path + CheckpointSuffix); err != nil {
		return fmt.Errorf("open audit log %s: %w", s.path, err)
	}
	s.publishDurable(s.durableHead)
	// Record where the log now ends, so that a log removed before the
	// first ping is still noticed at the next start.
	if err := s.saveHead(s.durableHead); err != nil {
		return fmt.Errorf("open audit log %s: %w", s.path, err)
	}
	return nil
}

// ErrLocked: another process has the log file open.
var ErrLocked = errors.New("the file is locked by another process (flock): another stage4 is using this audit log")

// load verifies the file, cuts a torn tail, finds open executions and
// returns the hash of record want ("" if the log ends before it).
func (s *Store) load(want uint64, opts ...audit.VerifyOption) (hashAtWant string, err error) {
	res, err := audit.Verify(io.NewSectionReader(s.file, 0, math.MaxInt64), append(opts, audit.WithRecordFunc(func(ev *stage4v1.AuditEvent) {
		s.track(ev)
		if ev.GetSequence() == want {
			hashAtWant = ev.GetHash()
		}
	}))...)
	if err != nil {
		return "", err
	}
	if res.TrailingBytes > 0 {
		if err := s.file.Truncate(res.Bytes); err != nil {
			return "", fmt.Errorf("cut incomplete last line: %w", err)
		}
	}
	// What was read may not be durable yet (the last process may have
	// stopped before an fsync): the head file must name durable records only.
	if res.Records > 0 || res.TrailingBytes > 0 {
		if err := s.file.Sync(); err != nil {
			return "", fmt.Errorf("fsync: %w", err)
		}
	}
	s.recovery = Recovery{TruncatedBytes: res.TrailingBytes, Records: res.Records}
	s.head = res.Head
	s.durableHead = res.Head
	s.size.Store(res.Bytes)
	s.written = res.Bytes
	return hashAtWant, nil
}

// track follows the executions of the records read at start-up.
func (s *Store) track(ev *stage4v1.AuditEvent) {
	id := ev.GetExecutionId()
	if audit.IsTerminal(ev.GetType()) {
		delete(s.open, id)
		return
	}
	if e, ok := s.open[id]; ok {
		e.LastType = ev.GetType()
		return
	}
	s.open[id] = &audit.OpenExecution{
		ExecutionID: id, PlanID: ev.GetPlanId(), UserID: ev.GetUserId(),
		LastType: ev.GetType(), Sequence: ev.GetSequence(),
	}
}

// Recovery reports what Open found and repaired.
func (s *Store) Recovery() Recovery { return s.recovery }

// Interrupted hands out, once, the executions that the file showed open
// at Open: only one process uses the file, so every one of them belongs to
// a process that stopped.
func (s *Store) Interrupted(context.Context) ([]audit.OpenExecution, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]audit.OpenExecution, 0, len(s.open))
	for _, e := range s.open {
		list = append(list, *e)
	}
	clear(s.open)
	// In the order of their first event, as every store hands them out.
	slices.SortFunc(list, func(a, b audit.OpenExecution) int { return cmp.Compare(a.Sequence, b.Sequence) })
	return list, nil
}

// usable returns why the store may not be used: closed, or failed for good.
func (s *Store) usable() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return audit.ErrClosed
	}
	return s.Err()
}

// Append writes the batch and, when durable, fsyncs the file, which makes
// every earlier write durable too. Then it checks that the path still names
// the file it wrote, at the length it wrote: otherwise the batch went
// somewhere the log at path will never show, and the store fails for good.
func (s *Store) Append(_ context.Context, durable bool, build func(audit.Head) ([]audit.Record, error)) error {
	if err := s.usable(); err != nil {
		return err
	}
	s.ioMu.Lock()
	defer s.ioMu.Unlock()
	recs, err := build(s.head)
	if err != nil || len(recs) == 0 {
		return err
	}
	// Checks every record's tree hashes before anything is written.
	tree, err := audit.NextTree(s.head, recs)
	if err != nil {
		return fmt.Errorf("append audit records: %w", err)
	}
	buf := s.wbuf[:0]
	for i := range recs {
		buf = append(buf, recs[i].Line...)
		buf = append(buf, '\n')
	}
	if cap(buf) <= keepBufBytes {
		s.wbuf = buf
	} else {
		s.wbuf = nil
	}
	if _, err := s.file.Write(buf); err != nil {
		return s.fail(fmt.Errorf("write: %w", err))
	}
	s.written += int64(len(buf))
	if err := s.appendTree(recs); err != nil {
		return err
	}
	s.head = audit.Head{Sequence: recs[len(recs)-1].Sequence, Hash: recs[len(recs)-1].Hash, Tree: tree}
	if durable {
		// Only the log: the tree file, derived from it, is fsynced before
		// the head file names its records (see TreeSuffix), which keeps a
		// second fsync off every batch.
		if err := s.file.Sync(); err != nil {
			return s.fail(fmt.Errorf("fsync: %w", err))
		}
	}
	// After the fsync, so that a change during it is seen too. It costs one
	// stat per batch, about a microsecond next to the fsync's hundreds.
	if err := s.checkIdentity(); err != nil {
		return err
	}
	if durable {
		s.size.Store(s.written) // the fsync covered every earlier write too
		s.publishDurable(s.head)
	}
	return nil
}

// keepBufBytes bounds the write buffer kept between batches.
const keepBufBytes = 4 << 20

// fail records the I/O error err as the store's permanent failure.
func (s *Store) fail(err error) error {
	return s.latch(fmt.Errorf("audit log %s failed: %w", s.path, err))
}

// latch records err as the store's permanent failure, unless there is one
// already, and returns the failure.
func (s *Store) latch(err error) error { return s.failed.Latch(err) }

// Err returns the store's permanent failure, or nil.
func (s *Store) Err() error { return s.failed.Err() }

// Ping returns the store's permanent failure, if any: a file store never
// recovers without a restart, whose start-up check is what makes
// appending safe again. It also checks that the file is still in place
// (see Append), so that a log removed or truncated while no plans arrive
// turns the health NOT_SERVING within a ping, and writes the head file
// when the durable head moved (see HeadSuffix): the log pings about once
// a second, which bounds how often that happens.
func (s *Store) Ping(context.Context) error {
	if err := s.usable(); err != nil {
		return err
	}
	// At most one batch's wait, once a second.
	s.ioMu.Lock()
	err := s.checkIdentity()
	head := s.durableHead
	s.ioMu.Unlock()
	if err != nil {
		return err
	}
	// Not latched: a head file that cannot be written now (a full disk)
	// may be written at the next ping.
	return s.saveHead(head)
}

// Close syncs what was written, checks that the log is still in place,
// writes the head file (after fsyncing the tree file) and closes the
// files.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	var err error
	s.ioMu.Lock()
	// The last records may have been written without a sync.
	if s.Err() == nil {
		if err = s.file.Sync(); err == nil {
			if err = s.checkIdentity(); err == nil {
				s.publishDurable(s.head)
			}
		}
	}
	head := s.durableHead
	s.ioMu.Unlock()
	// Also after a failure: the head file then names the last record that
	// was durable in place, so that the next start sees what was lost.
	return errors.Join(err, s.saveHead(head), s.file.Close(), s.tree.Close())
}

// Verify verifies the log file at path; see audit.Verify.
func Verify(path string, opts ...audit.VerifyOption) (audit.VerifyResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return audit.VerifyResult{}, fmt.Errorf("verify audit log: %w", err)
	}
	defer f.Close()
	return audit.Verify(f, opts...)
}
