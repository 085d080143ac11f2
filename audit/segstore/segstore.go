// Package segstore keeps an audit log in a local directory of
// size-bounded segment files (docs/AUDIT_LOG.md): the file store of
// Stage-4 at a year's scale.
//
// A segment is a file of JSON-lines records named by the sequence of its
// first record (00000000000000000001.jsonl). The hash chain and the
// Merkle tree run across segments: a new segment starts where the
// previous one ended. Only the last segment (the active one) is written;
// when a batch would take it past the segment size it is sealed: cut to
// its records, fsynced, and described by a line of the seal file
// (seals.jsonl) that names its first and last record, the hashes at both
// ends, the tree's edge after it and the executions still open. Sealed
// segments never change, so an operator may archive them (see
// docs/AUDIT_LOG.md), and Open verifies only the active segment: its
// start-up does not grow with the log.
//
// Segments are preallocated (WithPreallocate) so that an append does not
// change the file's size. ListAuditEvents finds records by execution,
// plan, user or type through an index kept beside the segments (index/),
// which is rebuilt when missing.
//
// The store is fail-closed: the first write or fsync error fails it for
// good (after a failed fsync the kernel may have dropped the dirty pages,
// so a retry could report success for data that is gone), and so does a
// segment changed under it. Only a
// segment that cannot be created (a full disk) is not final: nothing was
// written, and the next append or ping tries again.
package segstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/internal/fsutil"
)

// The files of a log directory besides its segments.
const (
	// SealsFile lists the sealed segments, one JSON line each (see seal).
	SealsFile = "seals.jsonl"
	// KeyFile is the store's fingerprint key (audit.Store.FingerprintKey),
	// fsutil.KeyLen raw random bytes, mode 0600.
	KeyFile = "key"
	// HeadFile names the log's last durable record: a log that no longer
	// reaches it is refused (ErrHeadMismatch) unless WithNewLog.
	HeadFile = "head"
	// TreeFile holds the Merkle tree's stored hashes of the whole log:
	// hash i is the 32 bytes at offset 32*i.
	TreeFile = "tree"
	// CheckpointFile holds the latest signed checkpoint.
	CheckpointFile = "checkpoint"
	// CosignedFile holds the latest checkpoint that witnesses cosigned.
	CosignedFile = "cosigned"
	// VerifiersFile holds the pinned verifier keys of the checkpoints'
	// signers, one a line (audit.Store rule 12).
	VerifiersFile = "verifiers"
	// IndexDir holds the index runs (package segindex).
	IndexDir = "index"
	// lockFile is what Open locks against a second process.
	lockFile = "lock"
	// SegmentExt ends a segment's name.
	SegmentExt = ".jsonl"
)

// ErrHeadMismatch: the log does not hold the last record its head file
// names; see fsutil.ErrHeadMismatch. Open refuses the log unless
// WithNewLog.
var ErrHeadMismatch = fsutil.ErrHeadMismatch

// ErrMissingFile: a file that a log directory with records always holds
// (its key, its head file, or its checkpoint once it pins signing keys)
// is missing: deleted, which would silently give the log new
// fingerprints or disable the checks the file serves. Open refuses the
// log unless WithNewLog.
var ErrMissingFile = errors.New("a file of the audit log directory is missing")

// ErrLocked: another process has the log open.
var ErrLocked = errors.New("the directory is locked by another process (flock): another stage4 is using this audit log")

// File is the storage of a segment; *os.File implements it. The store
// writes with WriteAt at the end of the records, reads with ReadAt, makes
// writes durable with Sync (a data-only sync, fdatasync, for an *os.File)
// and cuts a sealed segment to its records with Truncate.
type File interface {
	io.WriterAt
	io.ReaderAt
	Sync() error
	Truncate(size int64) error
	Close() error
}

// SegmentName is the file name of the segment whose first record has
// sequence first.
func SegmentName(first uint64) string { return fmt.Sprintf("%020d%s", first, SegmentExt) }

// ParseSegmentName returns the first sequence a segment's file name
// states; ok is false for other names.
func ParseSegmentName(name string) (first uint64, ok bool) {
	digits, found := bytes.CutSuffix([]byte(name), []byte(SegmentExt))
	if !found || len(digits) != 20 {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		first = first*10 + uint64(c-'0')
	}
	return first, first > 0
}

// Store is an audit.Store in a directory of segments.
type Store struct {
	dir  string
	cfg  config
	lock *os.File
	key  []byte

	recovery Recovery
	failed   fsutil.Failure

	// worker runs every write to the disk; what follows, up to view, is
	// its own (see worker.go).
	worker *worker
	active *segment // nil while the next segment could not be started
	// stalled is why the last roll to a new segment failed (a full disk),
	// until an append or a ping succeeds in making one.
	stalled     error
	head        audit.Head
	durableHead audit.Head
	wbuf, tbuf  []byte
	tree        *os.File
	// sealsFile is the seal file, appended to at every seal.
	sealsFile *os.File
	open      map[string]*audit.OpenExecution // open executions at the head, for seals
	// inherited are the executions a stopped process left open, which
	// Interrupted hands out and Claim never does.
	inherited map[string]bool

	// view is what readers go by: the durable head and the segments.
	view atomic.Pointer[view]

	// headMu guards savedHead, the head in the head file (zero: none).
	headMu    sync.Mutex
	savedHead audit.Head

	checkpoint *fsutil.CheckpointFile
	cosigned   *fsutil.CheckpointFile
	pins       *fsutil.PinFile
	// Files only this store changes, checked before each use and at every
	// ping (see fsutil.Watched); the checkpoint files watch their own.
	keyWatch, headWatch, treeWatch, sealsWatch *fsutil.Watched

	index *indexer
	next  nextState
	// requests is the journal of request keys (requests.go), and
	// claimsLogged the keys that the active segment's records name, for
	// Open to find those the journal lost in a crash.
	requests     *requests
	claimsLogged *loggedClaims

	mu          sync.Mutex // guards interrupted and closed
	interrupted []audit.OpenExecution
	closed      bool
}

var _ audit.Store = (*Store)(nil)

// segment is the active segment.
type segment struct {
	first    uint64
	path     string
	file     File
	fd       *os.File // file's descriptor, for fstat
	ident    os.FileInfo
	written  int64    // length of the records written, durable or not
	fileSize int64    // the file's length: written, or the preallocated size
	prevHash [32]byte // the hash its first record extends
	mem      *memIndex
}

// view is a consistent picture of the durable log for readers, replaced
// (never changed) after every durable batch and every seal.
type view struct {
	head audit.Head
	// sealed are the sealed segments in order; the active segment follows
	// them, from activeFirst, with activeSize durable bytes.
	sealed      []seal
	activeFirst uint64
	activeSize  int64
	activeMem   *memIndex
}

// Recovery is what Open found and repaired.
type Recovery struct {
	// Records is the number of records the log holds.
	Records uint64
	// SealedSegments is the number of sealed segments the seal file lists,
	// and ArchivedSegments how many of their files are not in the
	// directory (moved away by an operator).
	SealedSegments   int
	ArchivedSegments int
	// VerifiedRecords is the number of records Open verified: those of the
	// active segment, whatever the size of the log.
	VerifiedRecords uint64
	// TruncatedBytes is the length of an incomplete last record cut off
	// the active segment: a record being written when the process stopped,
	// never acknowledged.
	TruncatedBytes int64
	// OldHeadFile is where WithNewLog set aside a head file that the log
	// did not match, and HeadMismatch what did not match.
	OldHeadFile  string
	HeadMismatch string
	// TreeRecomputed is the number of records whose tree hashes Open
	// recomputed from the log: those of the active segment. TreeRebuilt
	// says why Open rebuilt the tree file from every segment (it was
	// missing, short or did not match the seal file); empty when it did not.
	TreeRecomputed uint64
	TreeRebuilt    string
	// IndexRebuilds is the number of sealed segments whose index was
	// missing and is being rebuilt in the background.
	IndexRebuilds int
	// MissingFiles names the files that WithNewLog let Open start
	// without (see ErrMissingFile); empty when none was missing.
	MissingFiles []string
}

// Open opens or creates the log directory dir, locks it against other
// processes, verifies the active segment against the end of the sealed
// ones, and cuts an incomplete last record (a crash's trace). Any other
// damage is refused with a *audit.ChainError naming the first bad
// sequence, because appending to a broken chain would hide the break.
// Executions left open are handed out by Interrupted.
func Open(dir string, opts ...Option) (*Store, error) {
	c := defaultConfig()
	for _, o := range opts {
		o(&c)
	}
	if c.segmentBytes < MinSegmentBytes || c.segmentBytes > MaxSegmentBytes {
		return nil, fmt.Errorf("open audit log %s: segment size %d is not between %d and %d bytes", dir, c.segmentBytes, MinSegmentBytes, MaxSegmentBytes)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	if err := fsutil.Lock(lock, ErrLocked); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open audit log %s: %w", dir, err)
	}
	s := &Store{dir: dir, cfg: c, lock: lock, open: map[string]*audit.OpenExecution{}}
	s.keyWatch, s.headWatch = fsutil.NewWatched(s.path(KeyFile)), fsutil.NewWatched(s.path(HeadFile))
	s.treeWatch, s.sealsWatch = fsutil.NewWatched(s.path(TreeFile)), fsutil.NewWatched(s.path(SealsFile))
	if err := s.start(); err != nil {
		if s.index != nil {
			s.index.close()
		}
		s.closeFiles()
		return nil, fmt.Errorf("open audit log %s: %w", dir, err)
	}
	s.worker = newWorker()
	return s, nil
}

func (s *Store) path(name string) string { return filepath.Join(s.dir, name) }

// start reads what the directory holds and brings it to a state Append
// can extend.
func (s *Store) start() error {
	var err error
	_, kerr := os.Stat(s.path(KeyFile))
	keyMissing := errors.Is(kerr, fs.ErrNotExist)
	saved, hasHead, mismatch := fsutil.ReadHead(s.path(HeadFile))
	if mismatch != nil && !errors.Is(mismatch, ErrHeadMismatch) {
		return mismatch
	}
	seals, err := s.openSeals()
	if err != nil {
		return err
	}
	names, err := s.segmentFiles(seals)
	if err != nil {
		return err
	}
	// The state at the start of the active segment.
	var base audit.Head
	activeFirst := uint64(1)
	if n := len(seals); n > 0 {
		last := &seals[n-1]
		if base, err = last.head(); err != nil {
			return err
		}
		activeFirst = last.Last + 1
		for _, e := range last.Open {
			s.open[e.ExecutionID] = e.execution()
		}
	}
	s.initNext()
	s.recovery.SealedSegments = len(seals)
	s.recovery.ArchivedSegments = len(seals) - (len(names) - 1)
	if _, ok := names[activeFirst]; !ok {
		s.recovery.ArchivedSegments = len(seals) - len(names)
	}
	hashAt, err := s.openActive(activeFirst, base, saved.Sequence)
	if err != nil {
		return err
	}
	if mismatch == nil && hasHead {
		if err := checkHead(saved, s.head, seals, hashAt); err != nil {
			mismatch = fmt.Errorf("%w: head file %s names record %d (hash %s), but %w",
				ErrHeadMismatch, s.path(HeadFile), saved.Sequence, audit.FormatHash(saved.Hash), err)
		}
	}
	if mismatch != nil {
		if !s.cfg.newLog {
			return mismatch
		}
		old, err := fsutil.SetAside(s.path(HeadFile))
		if err != nil {
			return fmt.Errorf("set the head file aside for a new log: %w", err)
		}
		s.recovery.OldHeadFile, s.recovery.HeadMismatch = old, mismatch.Error()
		if err := fsutil.SetAsideIfExists(s.path(CheckpointFile)); err != nil {
			return fmt.Errorf("set the checkpoint aside for a new log: %w", err)
		}
	} else if hasHead {
		s.savedHead = saved
	}
	if s.checkpoint, err = fsutil.LoadCheckpointFile(s.path(CheckpointFile)); err != nil {
		return err
	}
	if s.cosigned, err = fsutil.LoadCheckpointFile(s.path(CosignedFile)); err != nil {
		return err
	}
	if s.pins, err = fsutil.LoadPinFile(s.path(VerifiersFile)); err != nil {
		return err
	}
	if s.head.Sequence > 0 || len(seals) > 0 {
		if err := s.checkPresent(keyMissing, hasHead || mismatch != nil); err != nil {
			return err
		}
	}
	if s.key, err = fsutil.LoadOrCreateKey(s.path(KeyFile)); err != nil {
		return err
	}
	if err := s.keyWatch.Known(fsutil.KeyLen); err != nil {
		return err
	}
	if !hasHead && s.head.Sequence == 0 {
		// An empty log's head file says so, so that a log whose first
		// records were written before its first head file write (a crash
		// within a second of them) is not taken for one whose head file
		// was deleted.
		if err := fsutil.WriteHead(s.path(HeadFile), audit.Head{}); err != nil {
			return fmt.Errorf("write head file: %w", err)
		}
	}
	if err := s.watchHead(); err != nil {
		return err
	}
	s.recovery.Records = s.head.Sequence
	if err := s.openTree(seals); err != nil {
		return err
	}
	if s.active == nil {
		if err := s.startSegment(); err != nil {
			return err
		}
	} else if err := s.reserveTree(); err != nil {
		s.stalled = fmt.Errorf("%w: reserve space in the tree file: %w", audit.ErrUnavailable, err)
	}
	s.durableHead = s.head
	// Executions open now belong to the process that stopped.
	s.inherited = map[string]bool{}
	for id, e := range s.open {
		s.interrupted = append(s.interrupted, *e)
		s.inherited[id] = true
	}
	slices.SortFunc(s.interrupted, func(a, b audit.OpenExecution) int { return cmp.Compare(a.Sequence, b.Sequence) })
	s.view.Store(&view{head: s.head, sealed: seals, activeFirst: activeFirst, activeSize: s.active.written, activeMem: s.active.mem})
	if s.index, err = startIndexer(s, seals, names); err != nil {
		return err
	}
	if s.requests, err = openRequests(s.path(RequestsDir), s.cfg.wrapFile, s.open, s.claimsLogged, s.executionLogged,
		func(err error) { s.failSync(err) }); err != nil {
		return fmt.Errorf("open the request journal: %w", err)
	}
	s.claimsLogged = nil
	// Record where the log now ends, so that a log removed before the
	// first ping is still noticed at the next start.
	return s.saveHead(s.head)
}

// checkPresent refuses a log with records whose key, head or checkpoint
// file is missing (ErrMissingFile), unless WithNewLog, which takes it as
// it is and says so in Recovery.MissingFiles. The checkpoint is missing
// when the log pins signing keys (it signed a checkpoint) and has none.
func (s *Store) checkPresent(keyMissing, hasHead bool) error {
	var missing []string
	if keyMissing {
		missing = append(missing, KeyFile+" (the fingerprint key: the log would get new fingerprints)")
	}
	if !hasHead {
		missing = append(missing, HeadFile+" (it shows records cut off the log's end)")
	}
	if s.pins.Exists() && !s.checkpoint.Exists() {
		missing = append(missing, CheckpointFile+" (the latest signed checkpoint, which every later one must extend)")
	}
	if len(missing) == 0 {
		return nil
	}
	if s.cfg.newLog {
		s.recovery.MissingFiles = missing
		return nil
	}
	return fmt.Errorf("%w: the directory holds %d records, but not %s", ErrMissingFile, s.head.Sequence, strings.Join(missing, ", nor "))
}

// watchHead takes the head file as it is now, after the store wrote it.
func (s *Store) watchHead() error {
	fi, err := os.Stat(s.path(HeadFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.headWatch.Known(fi.Size())
}

// checkFiles checks every file this store alone changes (see
// fsutil.Watched), and latches the first change found as the store's
// permanent failure. The caller holds ioMu.
func (s *Store) checkFiles() error {
	for _, check := range []func() error{
		s.sealsWatch.Check, s.treeWatch.Check, s.keyWatch.Check, s.headWatch.Check,
		s.checkpoint.Check, s.cosigned.Check, s.pins.Check,
	} {
		if err := check(); err != nil {
			return s.latchChange(err)
		}
	}
	return nil
}

// latchChange latches a file changed under the store as its permanent
// failure; another error (a failed stat) fails it like an I/O error.
func (s *Store) latchChange(err error) error {
	var ce *fsutil.ChangedError
	if errors.As(err, &ce) {
		return s.latch(ce)
	}
	return s.fail(err)
}

// checkHead compares the head file's head with the log: nil when the log
// holds that record (as far as can be seen without reading sealed
// segments), else what the log holds instead. hashAt is the hash of the
// record of that sequence if the active segment holds it.
func checkHead(want, have audit.Head, seals []seal, hashAt *[32]byte) error {
	switch {
	case want.Sequence == 0:
		return nil
	case have.Sequence == 0:
		return errors.New("the directory holds no records")
	case have.Sequence < want.Sequence:
		return fmt.Errorf("the log holds only %d records", have.Sequence)
	case hashAt != nil:
		if *hashAt != want.Hash {
			return fmt.Errorf("its record %d has hash %s: another log", want.Sequence, audit.FormatHash(*hashAt))
		}
		return nil
	}
	// The record is in a sealed segment: its seal knows the hash of its
	// last record only.
	i, found := slices.BinarySearchFunc(seals, want.Sequence, func(sl seal, seq uint64) int { return cmp.Compare(sl.Last, seq) })
	if found && seals[i].LastHash != audit.FormatHash(want.Hash) {
		return fmt.Errorf("its record %d has hash %s: another log", want.Sequence, seals[i].LastHash)
	}
	return nil
}

// Recovery reports what Open found and repaired.
func (s *Store) Recovery() Recovery { return s.recovery }

// Dir returns the log's directory.
func (s *Store) Dir() string { return s.dir }

// Interrupted hands out, once, the executions that the log showed open at
// Open: only one process uses the directory, so every one of them belongs
// to a process that stopped.
func (s *Store) Interrupted(context.Context) ([]audit.OpenExecution, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, audit.ErrClosed
	}
	list := s.interrupted
	s.interrupted = nil
	return list, nil
}

// Claim returns this process's open executions among ids: only one
// process uses the directory, so they are its to close.
func (s *Store) Claim(ctx context.Context, ids []string) ([]audit.OpenExecution, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	var out []audit.OpenExecution
	err := s.do(ctx, "claim", func() error {
		for _, id := range ids {
			if e, ok := s.open[id]; ok && !s.inherited[id] {
				out = append(out, *e)
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b audit.OpenExecution) int { return cmp.Compare(a.Sequence, b.Sequence) })
	return out, err
}

// track follows the executions of records in log order: those still
// open at a seal are written into it, so that Open never reads a sealed
// segment to find them.
func (s *Store) track(seq uint64, t audit.EventType, executionID, planID, userID string) {
	if t.Terminal() {
		delete(s.open, executionID)
		delete(s.inherited, executionID)
		return
	}
	if e, ok := s.open[executionID]; ok {
		e.LastType = t
		return
	}
	s.open[executionID] = &audit.OpenExecution{
		ExecutionID: executionID, PlanID: planID, UserID: userID, LastType: t, Sequence: seq,
	}
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// usable returns why the store may not be used: closed, or failed for good.
func (s *Store) usable() error {
	if s.isClosed() {
		return audit.ErrClosed
	}
	return s.Err()
}

// fail records the I/O error err as the store's permanent failure.
func (s *Store) fail(err error) error {
	return s.latch(fmt.Errorf("audit log %s failed: %w", s.dir, err))
}

// failSync records a failed sync as the store's permanent failure: the
// batch's records were written, and whether they reached the disk (and
// will be found at the next start) cannot be known.
func (s *Store) failSync(err error) error {
	return s.latch(fmt.Errorf("audit log %s failed: %w: %w", s.dir, audit.ErrOutcomeUnknown, err))
}

// latch records err as the store's permanent failure, unless there is one
// already, and returns the failure. Every permanent failure is an
// audit.ErrUnavailable: the store takes nothing more until a restart,
// whose start-up checks what the disk holds.
func (s *Store) latch(err error) error {
	return s.failed.Latch(fmt.Errorf("%w: %w", audit.ErrUnavailable, err))
}

// Err returns the store's permanent failure, or nil.
func (s *Store) Err() error { return s.failed.Err() }

// Append writes the batch into the active segment, sealing it first and
// starting the next one when the batch would take it past the segment
// size, and, when durable, syncs it, which makes every earlier write
// durable too. Then it checks that the segment's path still names the
// file it wrote, at the length it wrote. It runs on the worker: a disk
// that does not answer within ctx leaves the store stuck (see do).
func (s *Store) Append(ctx context.Context, durable bool, build func(audit.Head) ([]audit.Record, error)) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.do(ctx, "append", func() error { return s.appendNow(durable, build) })
}

// appendNow is Append's work, on the worker.
func (s *Store) appendNow(durable bool, build func(audit.Head) ([]audit.Record, error)) error {
	if err := s.usable(); err != nil {
		return err
	}
	if s.active == nil {
		// The last seal could not start a segment: again.
		if err := s.startSegment(); err != nil {
			return err
		}
	}
	// The active segment is still the length the store made it, or the
	// store fails before it writes anything: a segment cut back (records
	// taken off its end) and then written to at the store's offset would
	// get its length back, and the check after the write could not see it.
	// One fstat, no path lookup; the path is checked after the write.
	if err := s.checkLength(s.active); err != nil {
		return err
	}
	recs, err := build(s.head)
	if err != nil || len(recs) == 0 {
		return err
	}
	tree, err := audit.NextTree(s.head, recs)
	if err != nil {
		return fmt.Errorf("append audit records: %w", err)
	}
	n := 0
	for i := range recs {
		n += len(recs[i].Line) + 1
	}
	if a := s.active; a.written > 0 && a.written+int64(n) > s.sealAt() {
		if err := s.roll(); err != nil {
			s.stalled = err
			// The segment's reserve takes the terminal events of the
			// executions already running, so that those calls get their
			// result while new ones are refused (the log retries them on
			// their own, see audit.Log).
			if !allTerminal(recs) || a.written+int64(n) > a.fileSize || !s.cfg.preallocate {
				return err
			}
		}
	}
	if s.active != nil && s.active.written+int64(n) <= s.sealAt() {
		s.stalled = nil
	}
	// The request journal's queued claims first: when they cannot be
	// written, nothing of the batch is (requests.go).
	if err := s.requests.flush(); err != nil {
		return err
	}
	a := s.active
	buf := s.wbuf[:0]
	for i := range recs {
		r := &recs[i]
		a.mem.add(r, a.written+int64(len(buf)))
		buf = append(buf, r.Line...)
		buf = append(buf, '\n')
		s.track(r.Sequence, r.Type, r.ExecutionID, r.PlanID, r.UserID)
	}
	s.wbuf = keepBuf(buf)
	if _, err := a.file.WriteAt(buf, a.written); err != nil {
		return s.fail(fmt.Errorf("write %s: %w", a.path, err))
	}
	// Past the preallocated size only when not preallocated, or for a
	// batch larger than a segment.
	a.written += int64(len(buf))
	a.fileSize = max(a.fileSize, a.written)
	if err := s.appendTree(recs); err != nil {
		return err
	}
	s.requests.settle(recs)
	s.head = audit.Head{Sequence: recs[len(recs)-1].Sequence, Hash: recs[len(recs)-1].Hash, Tree: tree}
	if durable {
		if err := s.syncSegment(a); err != nil {
			return err
		}
	}
	// After the sync, so that a change during it is seen too: one stat,
	// about a microsecond next to the sync's hundreds.
	if err := s.checkIdentity(a); err != nil {
		return err
	}
	if durable {
		s.publish()
	}
	return nil
}

// sealAt is the length past which the active segment is sealed: the
// segment size less its reserve, the last sixteenth, which only the
// terminal events of running executions may use, and only while the next
// segment cannot be made (a full disk).
func (s *Store) sealAt() int64 {
	if !s.cfg.preallocate {
		return s.cfg.segmentBytes
	}
	return s.cfg.segmentBytes - s.cfg.segmentBytes/16
}

func allTerminal(recs []audit.Record) bool {
	for i := range recs {
		if !recs[i].Terminal() {
			return false
		}
	}
	return true
}

// syncSegment makes the active segment's writes durable with a data-only
// sync (fdatasync): Linux flushes the metadata needed to read the data
// back, such as a grown size, and skips the rest (times). On a
// preallocated segment an append changes no metadata at all.
func (s *Store) syncSegment(a *segment) error {
	if err := fdatasync(a.file); err != nil {
		return s.failSync(fmt.Errorf("fsync %s: %w", a.path, err))
	}
	return nil
}

// publish makes the head durable for readers: the caller, on the worker,
// synced every write up to it.
func (s *Store) publish() {
	s.durableHead = s.head
	var v view
	if old := s.view.Load(); old != nil {
		v = *old
	}
	v.head = s.head
	v.activeFirst = s.active.first
	v.activeSize = s.active.written
	v.activeMem = s.active.mem
	s.view.Store(&v)
}

// keepBufBytes bounds the write buffers kept between batches.
const keepBufBytes = 4 << 20

func keepBuf(b []byte) []byte {
	if cap(b) <= keepBufBytes {
		return b
	}
	return nil
}

// checkIdentity reports, as a permanent failure, that the active
// segment's path no longer names the file the store writes, or that the
// file's length is not what the store made it: the segment (or the
// directory) was removed, renamed, replaced, truncated or written by
// someone else. Without it, writes would go on into a deleted inode and
// be acknowledged while the log lost them. It runs on the worker.
func (s *Store) checkIdentity(a *segment) error {
	fi, err := os.Stat(a.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s.latch(&fsutil.ChangedError{Msg: fmt.Sprintf("audit log segment %s was removed or renamed while in use", a.path)})
	case err != nil:
		return s.fail(fmt.Errorf("check that the audit log is still in place: %w", err))
	case !os.SameFile(fi, a.ident):
		return s.latch(&fsutil.ChangedError{Msg: fmt.Sprintf("audit log segment %s was replaced by another file while in use", a.path)})
	case fi.Size() != a.fileSize:
		return s.latch(&fsutil.ChangedError{Msg: fmt.Sprintf("audit log segment %s is %d bytes long (expected %d): truncated or written to by another program while in use", a.path, fi.Size(), a.fileSize)})
	}
	return nil
}

// checkLength reports, as a permanent failure, an active segment whose
// length is not what the store made it. The caller holds ioMu.
func (s *Store) checkLength(a *segment) error {
	fi, err := a.fd.Stat()
	if err != nil {
		return s.fail(fmt.Errorf("check the length of %s: %w", a.path, err))
	}
	if fi.Size() != a.fileSize {
		return s.latch(&fsutil.ChangedError{Msg: fmt.Sprintf("audit log segment %s is %d bytes long (expected %d): truncated or written to by another program while in use", a.path, fi.Size(), a.fileSize)})
	}
	return nil
}

// Ping returns the store's permanent failure, if any. It also checks that
// the active segment is still in place (see Append), tries again to make
// the next segment when the last attempt failed (a full disk), and writes
// the head file when the durable head moved: the log pings about once a
// second, which bounds how often that happens.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.do(ctx, "ping", s.pingNow)
}

// pingNow is Ping's work, on the worker.
func (s *Store) pingNow() error {
	if err := s.usable(); err != nil {
		return err
	}
	var err error
	switch {
	case s.active == nil:
		err = s.startSegment()
	case s.stalled != nil:
		// The disk was full: see whether the next segment can be made
		// now, and keep it for the append that needs it.
		var f *os.File
		if f, err = s.takeNext(); err == nil {
			s.putBackNext(f)
			s.stalled = nil
		}
	}
	if err == nil && s.active != nil {
		err = s.checkIdentity(s.active)
	}
	if err == nil {
		err = s.checkFiles()
	}
	if err != nil {
		return err
	}
	head := s.durableHead
	// Not latched: a head file that cannot be written now (a full disk)
	// may be written at the next ping.
	return s.saveHead(head)
}

// saveHead writes h, a durable head, to the head file if it moved since
// the last write. An empty log has nothing to protect and gets no head
// file.
func (s *Store) saveHead(h audit.Head) error {
	s.headMu.Lock()
	defer s.headMu.Unlock()
	if h.Sequence <= s.savedHead.Sequence {
		return nil
	}
	if err := s.headWatch.Check(); err != nil {
		return s.latchChange(err)
	}
	if err := fsutil.WriteHead(s.path(HeadFile), h); err != nil {
		return fmt.Errorf("write head file %s: %w", s.path(HeadFile), err)
	}
	s.savedHead = h
	return s.watchHead()
}

// FingerprintKey returns the key read or created by Open.
func (s *Store) FingerprintKey(context.Context) ([]byte, error) {
	if s.isClosed() {
		return nil, audit.ErrClosed
	}
	return slices.Clone(s.key), nil
}

// SaveCheckpoint replaces the checkpoint file with checkpoint unless the
// one there is for a larger tree.
func (s *Store) SaveCheckpoint(ctx context.Context, size uint64, checkpoint []byte) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.do(ctx, "checkpoint", func() error { return s.changed(s.checkpoint.Save(size, checkpoint)) })
}

// SaveCosigned replaces the cosigned checkpoint file with checkpoint
// unless the one there is for a larger tree.
func (s *Store) SaveCosigned(ctx context.Context, size uint64, checkpoint []byte) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.do(ctx, "cosigned checkpoint", func() error { return s.changed(s.cosigned.Save(size, checkpoint)) })
}

// LoadCosigned returns the latest cosigned checkpoint.
func (s *Store) LoadCosigned(context.Context) ([]byte, error) {
	if s.isClosed() {
		return nil, audit.ErrClosed
	}
	return s.cosigned.Latest()
}

// VerifierKeys returns the keys pinned in the verifiers file.
func (s *Store) VerifierKeys(context.Context) ([]string, error) {
	if s.isClosed() {
		return nil, audit.ErrClosed
	}
	return s.pins.Keys(), nil
}

// PinVerifierKeys rewrites the verifiers file with keys if it holds old.
func (s *Store) PinVerifierKeys(ctx context.Context, old, keys []string) ([]string, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	var pinned []string
	err := s.do(ctx, "verifier keys", func() error {
		var err error
		pinned, err = s.pins.Pin(old, keys)
		return s.changed(err)
	})
	return pinned, err
}

// changed latches a file changed under the store (a *fsutil.ChangedError)
// as its permanent failure, and returns any error.
func (s *Store) changed(err error) error {
	var ce *fsutil.ChangedError
	if errors.As(err, &ce) {
		return s.latch(ce)
	}
	return err
}

// LoadCheckpoint returns the latest checkpoint.
func (s *Store) LoadCheckpoint(context.Context) ([]byte, error) {
	if s.isClosed() {
		return nil, audit.ErrClosed
	}
	return s.checkpoint.Latest()
}

// DurableHead returns the head after the synced records.
func (s *Store) DurableHead(context.Context) (audit.Head, error) {
	if s.isClosed() {
		return audit.Head{}, audit.ErrClosed
	}
	return s.view.Load().head, nil
}

// ReadHashes reads stored hashes of the durable tree from the tree file.
func (s *Store) ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	if s.isClosed() {
		return nil, audit.ErrClosed
	}
	return read(ctx, func() ([]tlog.Hash, error) { return s.readHashes(indexes) })
}

func (s *Store) readHashes(indexes []int64) ([]tlog.Hash, error) {
	limit := tlog.StoredHashCount(int64(s.view.Load().head.Sequence))
	for _, x := range indexes {
		if x < 0 || x >= limit {
			return nil, fmt.Errorf("tree hash %d is not in the durable tree (%d hashes)", x, limit)
		}
	}
	if err := s.treeWatch.Check(); err != nil {
		return nil, s.latchChange(err)
	}
	hashes, err := fsutil.ReadHashesAt(s.tree, indexes)
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: the tree file %s was cut: %w", audit.ErrDataLoss, s.path(TreeFile), err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read the tree file: %w", audit.ErrUnavailable, err)
	}
	return hashes, nil
}

// closeTimeout bounds Close's last sync and head file on a disk that
// does not answer.
const closeTimeout = 10 * time.Second

// Close syncs what was written, checks that the active segment is still
// in place, writes the head file, waits for the index's background work
// and closes the files. On a disk that does not answer it gives up after
// closeTimeout: the next start checks what reached it.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	err := s.do(ctx, "close", func() error {
		var err error
		if s.Err() == nil && s.active != nil {
			if err = s.syncSegment(s.active); err == nil {
				if err = s.checkIdentity(s.active); err == nil {
					s.publish()
				}
			}
		}
		// Also after a failure: the head file then names the last record
		// that was durable in place, so that the next start sees what was
		// lost. On a full disk it stays behind, as between two pings: the
		// records it does not name are durable, and the next start
		// finds them; that is no failure of the close.
		herr := s.saveHead(s.durableHead)
		if errors.Is(herr, syscall.ENOSPC) || errors.Is(herr, syscall.EDQUOT) {
			herr = nil
		}
		return errors.Join(err, herr)
	})
	s.worker.stop()
	if s.index != nil {
		s.index.close()
	}
	return errors.Join(err, s.closeFiles())
}

// closeFiles closes whatever files are open.
func (s *Store) closeFiles() error {
	s.next.wg.Wait()
	var errs []error
	if s.active != nil {
		errs = append(errs, s.active.file.Close())
	}
	for _, f := range []*os.File{s.tree, s.sealsFile, s.lock} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	errs = append(errs, s.requests.close())
	return errors.Join(errs...)
}
