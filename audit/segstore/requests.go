package segstore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/internal/fsutil"
)

// RequestsDir holds the keys of idempotent executions and their answers
// (audit.RequestStore), beside the segments and never in them: an answer
// holds Stage-3's result, user data that records must not. It is a
// journal of one file per hour of writing, named by that hour in UTC
// (RequestsFileLayout plus ".req"). Each entry is a JSON line (a
// requestHeader) and, when the header says answer_bytes, that many bytes
// of answer and a newline; the latest entry of a key is its state. Files
// are preallocated with zeros, as segments are, so that an append changes
// no metadata and a data-only sync is enough; the entries end at the first
// zero byte.
//
// Claims are kept in memory and queued; every Append writes the queue to
// the journal first, with one write, and a durable Append syncs the
// journal in parallel with its segment. So a claim is durable before the
// EXECUTION_STARTED of its execution returns, at the cost of no write and
// no sync of its own. An Append also writes the entries that settle the
// claims of its terminal records. Open reads the headers (not the answers)
// back into memory, clearing a torn last entry; PurgeRequests removes the
// files whose hour is past the retention.
const RequestsDir = "requests"

// RequestsFileLayout is the time layout of a request journal's name.
const RequestsFileLayout = "2006-01-02T15"

// requestHeader is a journal entry's JSON line.
type requestHeader struct {
	Caller      string `json:"caller"`
	RequestID   string `json:"request_id"`
	PlanID      string `json:"plan_id"`
	ExecutionID string `json:"execution_id"`
	// State is running, done, unknown or released (the key is forgotten).
	State       string    `json:"state"`
	Claimed     time.Time `json:"claimed"`
	OpenUntil   time.Time `json:"open_until"`
	AnswerBytes int       `json:"answer_bytes,omitempty"`
	AnswerCRC   uint32    `json:"answer_crc32c,omitempty"`
}

// stateReleased is the journal's state of a forgotten key.
const stateReleased = "released"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// keyHash is how the journal's index names a key: 16 bytes of SHA-256
// over its parts, so that a key costs the same memory whatever its
// length. A collision is not believable; the entry read back is compared
// with the key anyway.
type keyHash [16]byte

func hashKey(k audit.RequestKey) keyHash {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(k.Caller)))
	h.Write(n[:])
	h.Write([]byte(k.Caller))
	h.Write([]byte(k.ID))
	var out keyHash
	copy(out[:], h.Sum(nil))
	return out
}

// requestLoc is what memory keeps of a settled key (about 60 bytes with
// the map's own): where its latest entry is, and enough to answer without
// reading it when the key is free.
type requestLoc struct {
	off     int64 // of the entry in its file
	claimed int64 // unix nanoseconds
	hour    int32 // hours since the epoch: the file
	state   audit.RequestState
}

// journalFile is one hour's file.
type journalFile struct {
	hour  int32
	path  string
	file  File
	size  int64 // the end of its entries: where the next one goes
	alloc int64 // its length: size, and the zeros after it
}

// journalChunk is how much a journal file grows by at a time, in zeros.
const journalChunk = 1 << 20

// requests is the store's journal of request keys.
type requests struct {
	dir  string
	wrap func(File) File

	mu      sync.Mutex
	index   map[keyHash]requestLoc
	running map[keyHash]*runningClaim
	byExec  map[string]keyHash // running claims by execution
	files   map[int32]*journalFile
	cur     *journalFile
	dirty   map[*journalFile]bool // written since their last sync
	// pending are the entries of claims and releases not written yet:
	// the next Append writes them.
	pending []pendingEntry
	buf     []byte
}

// pendingEntry is an entry not written yet, and the key whose index
// entry is to point at it once it is.
type pendingEntry struct {
	k     keyHash
	entry []byte
	claim *runningClaim // nil for a release
}

// runningClaim is a running claim, kept whole in memory: the few of the
// calls in flight.
type runningClaim struct {
	req audit.Request
	// logged: a record of its execution was appended, so the execution
	// is open in the log until its terminal record settles the claim.
	logged bool
	off    int64
	hour   int32
}

// openRequests reads the journal into memory. open are the executions
// open in the log: a running claim of another execution either never
// reached the log (forgotten) or lost the entry that settled it in a
// crash (its outcome is unknown); resolve tells which.
func openRequests(dir string, wrap func(File) File, open map[string]*audit.OpenExecution, resolve func(executionID string) (logged bool, err error)) (*requests, error) {
	r := &requests{
		dir: dir, wrap: wrap,
		index: map[keyHash]requestLoc{}, running: map[keyHash]*runningClaim{}, byExec: map[string]keyHash{},
		files: map[int32]*journalFile{}, dirty: map[*journalFile]bool{},
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := fsutil.SyncDir(filepath.Dir(dir)); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var hours []int32
	for _, e := range entries {
		if hour, ok := parseJournalName(e.Name()); ok {
			hours = append(hours, hour)
		}
	}
	slices.Sort(hours)
	for _, hour := range hours {
		if err := r.load(hour); err != nil {
			r.close()
			return nil, err
		}
	}
	// Claims left running by the process that stopped.
	for h, c := range r.running {
		if _, ok := open[c.req.ExecutionID]; ok {
			c.logged = true // its terminal record, from the sweep, settles it
			continue
		}
		logged, err := resolve(c.req.ExecutionID)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("resolve request %s: %w", c.req.Key, err)
		}
		state := stateReleased
		if logged {
			state = audit.RequestUnknown.String()
		}
		if err := r.settleLocked(h, c, state, nil, time.Now()); err != nil {
			r.close()
			return nil, err
		}
	}
	return r, nil
}

func journalName(hour int32) string {
	return time.Unix(int64(hour)*3600, 0).UTC().Format(RequestsFileLayout) + ".req"
}

func parseJournalName(name string) (int32, bool) {
	base, ok := strings.CutSuffix(name, ".req")
	if !ok {
		return 0, false
	}
	t, err := time.Parse(RequestsFileLayout, base)
	if err != nil || journalName(hourOf(t)) != name {
		return 0, false
	}
	return hourOf(t), true
}

func hourOf(t time.Time) int32 { return int32(t.Unix() / 3600) }

// openFile opens (creating) the journal of hour.
func (r *requests) openFile(hour int32) (*journalFile, error) {
	if f, ok := r.files[hour]; ok {
		return f, nil
	}
	path := filepath.Join(r.dir, journalName(hour))
	_, statErr := os.Stat(path)
	osf, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		// Its name must last as long as what is written into it.
		if err := fsutil.SyncDir(r.dir); err != nil {
			osf.Close()
			return nil, err
		}
	}
	fi, err := osf.Stat()
	if err != nil {
		osf.Close()
		return nil, err
	}
	var file File = osf
	if r.wrap != nil {
		file = r.wrap(osf)
	}
	f := &journalFile{hour: hour, path: path, file: file, size: fi.Size(), alloc: fi.Size()}
	r.files[hour] = f
	return f, nil
}

// load applies the entries of hour's file, in order, up to the zeros
// after them, and clears a torn last entry: one being written when the
// process stopped, never synced.
func (r *requests) load(hour int32) error {
	f, err := r.openFile(hour)
	if err != nil {
		return err
	}
	br := bufio.NewReaderSize(io.NewSectionReader(f.file, 0, f.alloc), 64<<10)
	var off int64
	for off < f.alloc {
		if first, err := br.Peek(1); err == nil && first[0] == 0 {
			break // the preallocated rest
		}
		line, err := br.ReadBytes('\n')
		var h requestHeader
		if err == nil {
			err = json.Unmarshal(line, &h)
		}
		n := int64(len(line))
		if err == nil && h.AnswerBytes > 0 {
			var skipped int
			skipped, err = br.Discard(h.AnswerBytes)
			n += int64(skipped)
			if err == nil {
				var nl byte
				if nl, err = br.ReadByte(); err == nil && nl != '\n' {
					err = errors.New("no newline after the answer")
				}
				n++
			}
		}
		if err == nil {
			_, err = r.apply(&h, hour, off)
		}
		if err != nil {
			// A torn tail: never synced, so never acknowledged. Zeros
			// again, so that the next entries are read after what
			// precedes it.
			end, lerr := lastNonZero(f.file, off, f.alloc)
			if lerr == nil {
				lerr = zeroFill(f.file, off, end)
			}
			if lerr != nil {
				return fmt.Errorf("clear the torn end of %s: %w", f.path, lerr)
			}
			break
		}
		off += n
	}
	f.size = off
	return nil
}

// apply makes h, the entry at off of hour's file, the state of its key.
func (r *requests) apply(h *requestHeader, hour int32, off int64) (keyHash, error) {
	k := hashKey(audit.RequestKey{Caller: h.Caller, ID: h.RequestID})
	if old, ok := r.running[k]; ok {
		delete(r.byExec, old.req.ExecutionID)
		delete(r.running, k)
	}
	if h.State == stateReleased {
		delete(r.index, k)
		return k, nil
	}
	state, ok := audit.ParseRequestState(h.State)
	if !ok {
		return k, fmt.Errorf("unknown request state %q", h.State)
	}
	r.index[k] = requestLoc{off: off, claimed: h.Claimed.UnixNano(), hour: hour, state: state}
	if state == audit.RequestRunning {
		r.running[k] = &runningClaim{req: audit.Request{
			Key: audit.RequestKey{Caller: h.Caller, ID: h.RequestID}, PlanID: h.PlanID, ExecutionID: h.ExecutionID,
			State: state, Claimed: h.Claimed, OpenUntil: h.OpenUntil,
		}, off: off, hour: hour}
		r.byExec[h.ExecutionID] = k
	}
	return k, nil
}

// write appends entries (whole) to the current hour's file and returns
// where they begin. The file grows by journalChunk of zeros at a time;
// a failed write is cleared again, so that the file never holds a part
// of an entry that was refused.
func (r *requests) write(entries []byte, now time.Time) (*journalFile, int64, error) {
	hour := hourOf(now)
	if r.cur == nil || r.cur.hour != hour {
		f, err := r.openFile(hour)
		if err != nil {
			return nil, 0, err
		}
		if old := r.cur; old != nil && old.alloc > old.size {
			// No longer written: its zeros go. Not synced: zeros or not,
			// the entries end where they end.
			if err := old.file.Truncate(old.size); err == nil {
				old.alloc = old.size
			}
		}
		r.cur = f
	}
	f := r.cur
	off := f.size
	if end := off + int64(len(entries)); end > f.alloc {
		alloc := (end/journalChunk + 1) * journalChunk
		if err := zeroFill(f.file, f.alloc, alloc); err != nil {
			return nil, 0, err
		}
		f.alloc = alloc
	}
	if _, err := f.file.WriteAt(entries, off); err != nil {
		if zerr := zeroFill(f.file, off, off+int64(len(entries))); zerr != nil {
			return nil, 0, errors.Join(err, zerr)
		}
		return nil, 0, err
	}
	f.size += int64(len(entries))
	r.dirty[f] = true
	return f, off, nil
}

// appendEntry encodes an entry onto b.
func appendEntry(b []byte, req *audit.Request, state string, answer []byte) []byte {
	h := requestHeader{
		Caller: req.Key.Caller, RequestID: req.Key.ID, PlanID: req.PlanID, ExecutionID: req.ExecutionID,
		State: state, Claimed: req.Claimed.UTC(), OpenUntil: req.OpenUntil.UTC(),
	}
	if state == audit.RequestDone.String() && len(answer) > 0 {
		h.AnswerBytes, h.AnswerCRC = len(answer), crc32.Checksum(answer, castagnoli)
	}
	line, _ := json.Marshal(&h) // strings and times: never fails
	b = append(append(b, line...), '\n')
	if h.AnswerBytes > 0 {
		b = append(append(b, answer...), '\n')
	}
	return b
}

// readEntry reads the entry at off of hour's file: its request and, for a
// done one, its answer.
func (r *requests) readEntry(hour int32, off int64) (audit.Request, error) {
	f, ok := r.files[hour]
	if !ok {
		return audit.Request{}, fmt.Errorf("%w: request journal %s is gone", audit.ErrDataLoss, journalName(hour))
	}
	var line []byte
	for size := 1024; ; size *= 4 {
		buf := make([]byte, min(int64(size), f.size-off))
		n, err := f.file.ReadAt(buf, off)
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			line = buf[:i]
			break
		}
		if err != nil || int64(n) == f.size-off {
			return audit.Request{}, fmt.Errorf("%w: request journal %s: entry at %d is cut", audit.ErrDataLoss, f.path, off)
		}
	}
	var h requestHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return audit.Request{}, fmt.Errorf("%w: request journal %s: entry at %d: %w", audit.ErrDataLoss, f.path, off, err)
	}
	req := audit.Request{
		Key: audit.RequestKey{Caller: h.Caller, ID: h.RequestID}, PlanID: h.PlanID, ExecutionID: h.ExecutionID,
		Claimed: h.Claimed, OpenUntil: h.OpenUntil,
	}
	req.State, _ = audit.ParseRequestState(h.State)
	if req.State == audit.RequestDone {
		req.Answer = make([]byte, h.AnswerBytes)
		if _, err := f.file.ReadAt(req.Answer, off+int64(len(line))+1); err != nil || crc32.Checksum(req.Answer, castagnoli) != h.AnswerCRC {
			// The answer cannot be given as it was: the outcome stands
			// (the plan ran), so a retry learns that it is unknown and
			// never runs it again.
			req.State, req.Answer = audit.RequestUnknown, nil
		}
	}
	return req, nil
}

// ClaimRequest claims req.Key in memory and queues its entry, which the
// next Append writes and the next durable Append syncs.
func (s *Store) ClaimRequest(ctx context.Context, req audit.Request, since time.Time) (audit.Request, bool, error) {
	if err := s.usable(); err != nil {
		return audit.Request{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return audit.Request{}, false, fmt.Errorf("claim request: %w", err)
	}
	r := s.requests
	k := hashKey(req.Key)
	now := time.Now()
	req.State, req.Answer = audit.RequestRunning, nil
	entry := appendEntry(nil, &req, req.State.String(), nil)
	r.mu.Lock()
	defer r.mu.Unlock()
	if loc, ok := r.index[k]; ok && !claimedBefore(loc, since) {
		held, err := r.held(k, loc, now)
		if err != nil {
			return audit.Request{}, false, fmt.Errorf("claim request: %w", err)
		}
		if held != nil {
			return *held, false, nil
		}
	}
	if old, ok := r.running[k]; ok {
		delete(r.byExec, old.req.ExecutionID)
	}
	c := &runningClaim{req: req, off: -1}
	r.index[k] = requestLoc{off: -1, claimed: req.Claimed.UnixNano(), state: audit.RequestRunning}
	r.running[k] = c
	r.byExec[req.ExecutionID] = k
	r.pending = append(r.pending, pendingEntry{k: k, entry: entry, claim: c})
	return req, true, nil
}

// claimedBefore reports whether loc was claimed before t (never, for the
// zero t).
func claimedBefore(loc requestLoc, t time.Time) bool {
	return !t.IsZero() && loc.claimed < t.UnixNano()
}

// held returns what holds the key at loc, or nil when a running claim is
// stale: past its OpenUntil without a record of its execution.
func (r *requests) held(k keyHash, loc requestLoc, now time.Time) (*audit.Request, error) {
	if c, ok := r.running[k]; ok && loc.state == audit.RequestRunning {
		if !c.logged && now.After(c.req.OpenUntil) {
			return nil, nil
		}
		req := c.req
		return &req, nil
	}
	req, err := r.readEntry(loc.hour, loc.off)
	if err != nil {
		return nil, err
	}
	if req.State != audit.RequestDone {
		// An unknown outcome kept in memory only (see settleLocked).
		req.State, req.Answer = loc.state, nil
	}
	return &req, nil
}

// ReleaseRequest forgets key if executionID holds it running, and queues
// the entry that says so.
func (s *Store) ReleaseRequest(ctx context.Context, key audit.RequestKey, executionID string) error {
	if s.isClosed() {
		return audit.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("release request: %w", err)
	}
	r := s.requests
	k := hashKey(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.running[k]
	if !ok || c.req.ExecutionID != executionID {
		return nil
	}
	delete(r.running, k)
	delete(r.byExec, executionID)
	delete(r.index, k)
	r.pending = append(r.pending, pendingEntry{k: k, entry: appendEntry(nil, &c.req, stateReleased, nil)})
	return nil
}

// flush writes the queued entries, with one write. When that fails
// (a full disk), nothing of them is in the file and the append is to be
// refused: a claim that cannot be made durable must not lead to Stage-3.
func (r *requests) flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) == 0 {
		return nil
	}
	buf := r.buf[:0]
	for _, p := range r.pending {
		buf = append(buf, p.entry...)
	}
	f, off, err := r.write(buf, time.Now())
	r.buf = keepBuf(buf)
	if err != nil {
		return fmt.Errorf("%w: write the request journal: %w", audit.ErrUnavailable, err)
	}
	for _, p := range r.pending {
		if c := p.claim; c != nil {
			c.off, c.hour = off, f.hour
			if r.running[p.k] == c {
				loc := r.index[p.k]
				loc.off, loc.hour = off, f.hour
				r.index[p.k] = loc
			}
		}
		off += int64(len(p.entry))
	}
	clear(r.pending)
	r.pending = r.pending[:0]
	return nil
}

// settleLocked ends a running claim in state (done with answer, unknown
// or released). When its entry cannot be written (a full disk), memory
// says unknown (or forgets a released key) and the next start, finding
// the claim running with its execution's records, says unknown too: the
// answer is lost, never the fact that the plan may have run.
func (r *requests) settleLocked(k keyHash, c *runningClaim, state string, answer []byte, now time.Time) error {
	delete(r.running, k)
	delete(r.byExec, c.req.ExecutionID)
	r.buf = appendEntry(r.buf[:0], &c.req, state, answer)
	f, off, err := r.write(r.buf, now)
	r.buf = keepBuf(r.buf)
	switch {
	case state == stateReleased:
		delete(r.index, k)
	case err != nil:
		r.index[k] = requestLoc{off: c.off, claimed: c.req.Claimed.UnixNano(), hour: c.hour, state: audit.RequestUnknown}
	default:
		st, _ := audit.ParseRequestState(state)
		r.index[k] = requestLoc{off: off, claimed: c.req.Claimed.UnixNano(), hour: f.hour, state: st}
	}
	return err
}

// settle applies a batch's records to the running claims, after the batch
// was written: a record marks its execution's claim as logged, a terminal
// one with a Request settles it. A settlement that cannot be written is
// not the batch's failure (see settleLocked).
func (r *requests) settle(recs []audit.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.byExec) == 0 {
		return
	}
	now := time.Now()
	for i := range recs {
		rec := &recs[i]
		k, ok := r.byExec[rec.ExecutionID]
		if !ok {
			continue
		}
		c := r.running[k]
		c.logged = true
		if rec.Request == nil || !rec.Terminal() {
			continue
		}
		switch {
		case rec.Request.Release:
			_ = r.settleLocked(k, c, stateReleased, nil, now)
		case rec.Request.Answer != nil:
			_ = r.settleLocked(k, c, audit.RequestDone.String(), rec.Request.Answer, now)
		default:
			_ = r.settleLocked(k, c, audit.RequestUnknown.String(), nil, now)
		}
	}
}

// takeDirty returns the files written since their last sync, which the
// caller is to sync now.
func (r *requests) takeDirty() []*journalFile {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.dirty) == 0 {
		return nil
	}
	files := make([]*journalFile, 0, len(r.dirty))
	for f := range r.dirty {
		files = append(files, f)
	}
	clear(r.dirty)
	return files
}

// syncFiles syncs files (from takeDirty).
func syncFiles(files []*journalFile) error {
	for _, f := range files {
		if err := fdatasync(f.file); err != nil {
			return fmt.Errorf("fsync %s: %w", f.path, err)
		}
	}
	return nil
}

// executionLogged reports whether the log holds a record of the
// execution id, for openRequests.
func (s *Store) executionLogged(id string) (bool, error) {
	page, err := s.List(context.Background(), audit.Query{Filter: audit.Filter{ExecutionID: id}, Limit: 1})
	return len(page.Events) > 0, err
}

// PurgeRequests forgets the keys claimed before before and removes the
// journal files whose hour ended before it.
func (s *Store) PurgeRequests(ctx context.Context, before time.Time) error {
	if s.isClosed() {
		return audit.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("purge requests: %w", err)
	}
	r := s.requests
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, loc := range r.index {
		if claimedBefore(loc, before) {
			delete(r.index, k)
			if c, ok := r.running[k]; ok {
				delete(r.byExec, c.req.ExecutionID)
				delete(r.running, k)
			}
		}
	}
	removed := false
	for hour, f := range r.files {
		if f == r.cur || r.dirty[f] || time.Unix(int64(hour+1)*3600, 0).After(before) {
			continue
		}
		if err := f.file.Close(); err != nil {
			return fmt.Errorf("purge requests: %w", err)
		}
		delete(r.files, hour)
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("purge requests: %w", err)
		}
		removed = true
	}
	if removed {
		if err := fsutil.SyncDir(r.dir); err != nil {
			return fmt.Errorf("purge requests: %w", err)
		}
	}
	return nil
}

// close closes the journal's files.
func (r *requests) close() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, f := range r.files {
		errs = append(errs, f.file.Close())
	}
	clear(r.files)
	return errors.Join(errs...)
}
