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
	"github.com/stage4/stage4/internal/atomicfile"
)

// RequestsDir holds the keys of idempotent executions and their answers
// (audit.RequestStore), beside the segments and never in them: an answer
// holds Stage-3's result, user data that records must not. It is a
// journal of one file per hour of writing, named by that hour in UTC
// (RequestsFileLayout plus ".req"). Each entry is a JSON line (a
// requestHeader) and, when the header says answer_bytes, that many bytes
// of answer and a newline; the latest entry of a key is its state. Files
// are preallocated with zeros, a MiB at a time, as segments are; the
// entries end at the first zero byte.
//
// The journal costs an execution no sync of its own. Claims are kept in
// memory and queued; every Append writes the queue to the journal first,
// with one write, and the entries that settle the claims of its terminal
// records after its segment. The journal is synced in the background,
// within journalSyncDelay of a write, and at every seal and Close. What
// makes a claim durable before Stage-3 is called is its execution's
// PLAN_RECEIVED, which names the key (audit.RequestKeyOf) and is durable
// with EXECUTION_STARTED: after a crash, Open finds in the active
// segment's records the keys whose journal entries were lost (the
// journal is synced at every seal, so older records need no reading),
// as claimed by their execution, or unknown when it has ended. A process
// that is killed loses nothing (the kernel keeps what was written); a
// crash of the machine may lose the answers written in the last
// journalSyncDelay, and their keys are then unknown, never free.
//
// Open reads the headers (not the answers) back into memory, clears a
// torn last entry, and settles the claims a stopped process left running.
// PurgeRequests removes the files whose hour is past the retention.
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
	syncing map[*journalFile]int  // being synced, which Purge leaves
	// timer syncs the dirty files in the background, armed by the first
	// write after a sync; onSyncErr gets a failed background sync.
	timer     *time.Timer
	onSyncErr func(error)
	closed    bool
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

// journalSyncDelay is the longest a journal entry waits for its sync.
const journalSyncDelay = time.Second

// openRequests reads the journal into memory. open are the executions
// open in the log. logged are the keys that the active segment's records
// name, which the journal may have lost in a crash. A running claim of an
// execution that is not open either never reached the log (forgotten) or
// lost the entry that settled it (unknown); resolve tells which.
// onSyncErr gets a background sync that failed.
func openRequests(dir string, wrap func(File) File, open map[string]*audit.OpenExecution, logged *loggedClaims,
	resolve func(executionID string) (logged bool, err error), onSyncErr func(error)) (*requests, error) {
	r := &requests{
		dir: dir, wrap: wrap, onSyncErr: onSyncErr,
		index: map[keyHash]requestLoc{}, running: map[keyHash]*runningClaim{}, byExec: map[string]keyHash{},
		files: map[int32]*journalFile{}, dirty: map[*journalFile]bool{}, syncing: map[*journalFile]int{},
	}
	if err := r.open(open, logged, resolve); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *requests) open(open map[string]*audit.OpenExecution, logged *loggedClaims, resolve func(string) (bool, error)) error {
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(filepath.Dir(r.dir)); err != nil {
		return err
	}
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return err
	}
	var hours []int32
	for _, e := range entries {
		if hour, ok := parseJournalName(e.Name()); ok {
			hours = append(hours, hour)
		}
	}
	slices.Sort(hours)
	released := map[string]bool{} // executions whose key was released
	for _, hour := range hours {
		if err := r.load(hour, released); err != nil {
			return err
		}
	}
	now := time.Now()
	if err := r.recover(logged, released, now); err != nil {
		return err
	}
	// Claims left running by the process that stopped.
	for h, c := range r.running {
		if _, ok := open[c.req.ExecutionID]; ok {
			c.logged = true // its terminal record, from the sweep, settles it
			continue
		}
		wasLogged, err := resolve(c.req.ExecutionID)
		if err != nil {
			return fmt.Errorf("resolve request %s: %w", c.req.Key, err)
		}
		state := stateReleased
		if wasLogged {
			state = audit.RequestUnknown.String()
		}
		if err := r.settleLocked(h, c, state, nil, now); err != nil {
			return err
		}
	}
	// What Open wrote is synced now, before anything relies on it.
	return r.sync()
}

// loggedClaims are the keys that the active segment's PLAN_RECEIVED
// records name, in log order, with the executions that ended there.
type loggedClaims struct {
	claims []audit.Request // State unset; Claimed is the record's time
	ended  map[string]bool
}

// noteLoggedClaim notes, while Open reads the active segment, the key a
// record names and the executions that end.
func (s *Store) noteLoggedClaim(ev *audit.Event) {
	if s.claimsLogged == nil {
		s.claimsLogged = &loggedClaims{ended: map[string]bool{}}
	}
	if ev.Type.Terminal() {
		s.claimsLogged.ended[ev.ExecutionID] = true
		return
	}
	if k, ok := audit.RequestKeyOf(ev); ok {
		s.claimsLogged.claims = append(s.claimsLogged.claims, audit.Request{
			Key: k, PlanID: ev.PlanID, ExecutionID: ev.ExecutionID, Claimed: ev.Time, OpenUntil: ev.Time,
		})
	}
}

// recover claims again the keys that the active segment's records name
// and that the journal lost in a crash: a key it holds for another
// execution claimed before the record, or not at all, unless that
// execution's key was released. They are then running (their execution,
// if open, is closed by the sweep) or, when the execution ended, unknown.
func (r *requests) recover(logged *loggedClaims, released map[string]bool, now time.Time) error {
	if logged == nil {
		return nil
	}
	for _, c := range logged.claims {
		k := hashKey(c.Key)
		if released[c.ExecutionID] {
			continue
		}
		if loc, ok := r.index[k]; ok {
			if rc, running := r.running[k]; running && rc.req.ExecutionID == c.ExecutionID {
				continue
			}
			if loc.claimed >= c.Claimed.UnixNano() {
				continue // the journal knows this claim, or a later one
			}
		}
		state := audit.RequestRunning.String()
		if logged.ended[c.ExecutionID] {
			state = audit.RequestUnknown.String()
		}
		r.buf = appendEntry(r.buf[:0], &c, state, nil)
		f, off, err := r.write(r.buf, now)
		if err != nil {
			return err
		}
		if _, err := r.apply(&requestHeader{Caller: c.Key.Caller, RequestID: c.Key.ID, PlanID: c.PlanID, ExecutionID: c.ExecutionID,
			State: state, Claimed: c.Claimed, OpenUntil: c.OpenUntil}, f.hour, off); err != nil {
			return err
		}
	}
	return nil
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
		if err := atomicfile.SyncDir(r.dir); err != nil {
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
// process stopped, never synced. released notes whether each execution's
// latest entry released its key.
func (r *requests) load(hour int32, released map[string]bool) error {
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
			released[h.ExecutionID] = h.State == stateReleased
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
	if r.timer == nil && !r.closed {
		r.timer = time.AfterFunc(journalSyncDelay, r.backgroundSync)
	}
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
// was written: a record marks its execution's claim as logged, and a
// terminal one with a Request settles it, all with one write. A
// settlement that cannot be written is not the batch's failure: memory
// then says unknown (or forgets a released key), as the next Open will,
// finding the claim running and its execution ended.
func (r *requests) settle(recs []audit.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.byExec) == 0 {
		return
	}
	type settlement struct {
		k     keyHash
		c     *runningClaim
		state audit.RequestState // 0: released
		off   int64              // of its entry in buf
	}
	var done []settlement
	buf := r.buf[:0]
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
		st := settlement{k: k, c: c, off: int64(len(buf))}
		switch {
		case rec.Request.Release:
			buf = appendEntry(buf, &c.req, stateReleased, nil)
		case rec.Request.Answer != nil:
			st.state = audit.RequestDone
			buf = appendEntry(buf, &c.req, st.state.String(), rec.Request.Answer)
		default:
			st.state = audit.RequestUnknown
			buf = appendEntry(buf, &c.req, st.state.String(), nil)
		}
		delete(r.running, k)
		delete(r.byExec, c.req.ExecutionID)
		done = append(done, st)
	}
	if len(done) == 0 {
		return
	}
	f, off, err := r.write(buf, time.Now())
	r.buf = keepBuf(buf)
	for _, st := range done {
		switch {
		case st.state == 0:
			delete(r.index, st.k)
		case err != nil:
			r.index[st.k] = requestLoc{off: st.c.off, claimed: st.c.req.Claimed.UnixNano(), hour: st.c.hour, state: audit.RequestUnknown}
		default:
			r.index[st.k] = requestLoc{off: off + st.off, claimed: st.c.req.Claimed.UnixNano(), hour: f.hour, state: st.state}
		}
	}
}

// takeDirty returns the files written since their last sync, which the
// caller syncs with syncFiles. The caller holds mu.
func (r *requests) takeDirty() []*journalFile {
	files := make([]*journalFile, 0, len(r.dirty))
	for f := range r.dirty {
		files = append(files, f)
		r.syncing[f]++
	}
	clear(r.dirty)
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	return files
}

// syncFiles syncs files (from takeDirty) and gives them back.
func (r *requests) syncFiles(files []*journalFile) error {
	var err error
	for _, f := range files {
		if err == nil {
			if serr := fdatasync(f.file); serr != nil {
				err = fmt.Errorf("fsync %s: %w", f.path, serr)
			}
		}
	}
	r.mu.Lock()
	for _, f := range files {
		if r.syncing[f]--; r.syncing[f] == 0 {
			delete(r.syncing, f)
		}
	}
	r.mu.Unlock()
	return err
}

// sync syncs every file written since its last sync, now.
func (r *requests) sync() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	files := r.takeDirty()
	r.mu.Unlock()
	return r.syncFiles(files)
}

// backgroundSync is the timer's: a failed sync fails the store, as a
// failed segment sync does (the journal's state is then unknown).
func (r *requests) backgroundSync() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	files := r.takeDirty()
	r.mu.Unlock()
	if err := r.syncFiles(files); err != nil && r.onSyncErr != nil {
		r.onSyncErr(err)
	}
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
		if f == r.cur || r.dirty[f] || r.syncing[f] > 0 || time.Unix(int64(hour+1)*3600, 0).After(before) {
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
		if err := atomicfile.SyncDir(r.dir); err != nil {
			return fmt.Errorf("purge requests: %w", err)
		}
	}
	return nil
}

// close syncs what was written since the last sync and closes the
// journal's files. It is idempotent.
func (r *requests) close() error {
	if r == nil {
		return nil
	}
	err := r.sync()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	errs := []error{err}
	for _, f := range r.files {
		errs = append(errs, f.file.Close())
	}
	clear(r.files)
	return errors.Join(errs...)
}
