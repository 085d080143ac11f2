// Package memstore is an audit.Store in memory, for tests: of audit.Log
// itself, of the server and the gateway where the store is not the
// subject, and of faults that real storage makes hard to time (a store
// that hangs, refuses, or loses the answer to an append). It passes the
// conformance suite (audit/storetest) like every store, so code tested on
// it behaves the same on the real ones.
//
// A Storage is the memory a log lives in; Open opens a Store on it, as a
// process opens a log directory or a database. Several Stores open on one
// Storage at once are replicas of one shared store; opening it again
// after Close (or after Crash) is a restart. Nothing survives the
// process.
//
// Importing the package registers a driver for "mem:NAME" locations:
// every location of one NAME is one Storage for the life of the process.
package memstore

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// Storage is the memory of one log: its records, open executions,
// checkpoint and key, and the faults a test sets. It is safe for
// concurrent use.
type Storage struct {
	mu      sync.Mutex
	records []audit.Record // every record; [durable:] may still be lost
	durable int            // records that a crash keeps
	head    audit.Head
	dhead   audit.Head // the head after durable records
	open    map[string]*openExec
	cp      []byte
	cpSize  uint64
	cos     []byte // the latest cosigned checkpoint
	cosSize uint64
	pins    []string // the pinned verifier keys
	key     []byte
	stores  map[*Store]bool // open stores
	// requests are the keys of idempotent executions (requests.go).
	requests requests

	fault    fault
	unhang   chan struct{} // closed by Heal: hung calls go on
	appendMu sync.Mutex    // serialises appenders of every replica, as a row lock would
}

// openExec is an open execution and who runs it.
type openExec struct {
	audit.OpenExecution
	owner     *Store
	name      string
	openUntil time.Time
	claimedBy *Store
}

type fault struct {
	broken     error // appends and pings fail with it (wrapped in ErrUnavailable)
	permanent  bool  // broken stays until a new Store is opened (a failed disk)
	hang       bool  // appends, pings and lists block until Heal or ctx
	loseAnswer bool  // the next append is stored but answered ErrOutcomeUnknown
}

// NewStorage returns empty storage with a new random key.
func NewStorage() *Storage {
	key := make([]byte, 32)
	_, _ = rand.Read(key) // never fails (crypto/rand documents it)
	return &Storage{open: map[string]*openExec{}, key: key, stores: map[*Store]bool{}, unhang: make(chan struct{})}
}

// Break makes every append and ping of the stores on s fail with err
// (wrapped in audit.ErrUnavailable, nothing stored) until Heal, as an
// unreachable database would. permanent makes it a failed disk instead:
// the stores open now keep failing after Heal, and only a Store opened
// afterwards (a restart) works.
func (s *Storage) Break(err error, permanent bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault.broken, s.fault.permanent = err, permanent
	if permanent {
		for st := range s.stores {
			st.failed = err
		}
	}
}

// Hang makes appends, pings and lists block until Heal or until their
// context ends, as storage that stops answering would.
func (s *Storage) Hang() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault.hang = true
}

// LoseAnswer makes the next append store its batch but answer
// audit.ErrOutcomeUnknown, as a connection lost during COMMIT would.
func (s *Storage) LoseAnswer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault.loseAnswer = true
}

// Heal ends Break and Hang.
func (s *Storage) Heal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault.broken, s.fault.hang = nil, false
	close(s.unhang)
	s.unhang = make(chan struct{})
}

// Crash loses every record not yet durable, as a crash of the machine
// would; the stores open on s are gone with it (their calls fail with
// ErrClosed), and their executions belong to processes that stopped.
func (s *Storage) Crash() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for st := range s.stores {
		st.crashed = true
	}
	s.stores = map[*Store]bool{}
	s.records = s.records[:s.durable]
	s.head = s.dhead
	for id, e := range s.open {
		if e.OpenExecution.Sequence > s.dhead.Sequence {
			delete(s.open, id)
		}
	}
}

// RollBack removes the records after to and makes to the head, as an
// operator editing the storage (or restoring a backup) under a running
// process would; to must be the head after one of the records.
func (s *Storage) RollBack(to audit.Head) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := int(to.Sequence)
	s.records = s.records[:n]
	s.durable = min(s.durable, n)
	s.head = to
	if s.dhead.Sequence > to.Sequence {
		s.dhead = to
	}
}

// BreakHead sets the head's hash to garbage, so that the head no longer
// names the last record, as an operator's edit of the head would.
func (s *Storage) BreakHead() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.head.Hash[0] ^= 0xff
}

// DeleteRecord removes the record of sequence seq, leaving a gap, as an
// operator deleting a row would.
func (s *Storage) DeleteRecord(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.records, func(r audit.Record) bool { return r.Sequence == seq })
	if i < 0 {
		return
	}
	s.records = slices.Delete(s.records, i, i+1)
	if i < s.durable {
		s.durable--
	}
}

// Records returns copies of the durable records, for tests that look at
// what a crash would keep.
func (s *Storage) Records() []audit.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.records[:s.durable])
}

// Store is an audit.Store on a Storage.
type Store struct {
	st   *Storage
	name string

	// guarded by st.mu
	closed  bool
	crashed bool
	failed  error      // a permanent Break seen by this store
	last    audit.Head // the last head this store appended to or made
}

var _ audit.Store = (*Store)(nil)

// Open opens a store on st under the replica name name ("" is fine for a
// log of one process). Executions left open by a closed store of the same
// name are handed out at once by Interrupted (a restart); those of other
// names only once their OpenUntil has passed and their owner is closed.
func Open(st *Storage, name string) *Store {
	s := &Store{st: st, name: name}
	st.mu.Lock()
	st.stores[s] = true
	st.mu.Unlock()
	return s
}

// wait applies the storage's faults to a call: it blocks while the
// storage hangs (until Heal or ctx), then reports a break. It returns with
// st.mu held on success.
func (s *Store) enter(ctx context.Context, write bool) error {
	for {
		s.st.mu.Lock()
		switch {
		case s.closed || s.crashed:
			s.st.mu.Unlock()
			return audit.ErrClosed
		case s.st.fault.hang:
			unhang := s.st.unhang
			s.st.mu.Unlock()
			select {
			case <-unhang:
				continue
			case <-ctx.Done():
				return fmt.Errorf("%w: the storage does not answer: %w", audit.ErrUnavailable, ctx.Err())
			}
		}
		if err := ctx.Err(); err != nil {
			s.st.mu.Unlock()
			return err
		}
		if write {
			if s.failed != nil {
				err := s.failed
				s.st.mu.Unlock()
				return fmt.Errorf("%w: failed for good: %w", audit.ErrUnavailable, err)
			}
			if err := s.st.fault.broken; err != nil {
				s.st.mu.Unlock()
				return fmt.Errorf("%w: %w", audit.ErrUnavailable, err)
			}
		}
		return nil
	}
}

// Append stores the batch build makes. Replicas on one Storage take turns
// as a shared row lock would make them.
func (s *Store) Append(ctx context.Context, durable bool, build func(audit.Head) ([]audit.Record, error)) error {
	s.st.appendMu.Lock()
	defer s.st.appendMu.Unlock()
	if err := s.enter(ctx, true); err != nil {
		return err
	}
	defer s.st.mu.Unlock()
	if err := s.checkHead(); err != nil {
		return err
	}
	head := s.st.head
	head.Tree = slices.Clone(head.Tree)
	recs, err := build(head)
	if err != nil || len(recs) == 0 {
		return err
	}
	tree, err := audit.NextTree(s.st.head, recs)
	if err != nil {
		return fmt.Errorf("append audit records: %w", err)
	}
	for i := range recs {
		r := recs[i]
		r.Line = slices.Clone(r.Line)
		r.TreeHashes = slices.Clone(r.TreeHashes)
		s.st.records = append(s.st.records, r)
		s.track(&r)
		s.settle(&r)
	}
	last := &recs[len(recs)-1]
	s.st.head = audit.Head{Sequence: last.Sequence, Hash: last.Hash, Tree: tree}
	s.last = audit.Head{Sequence: last.Sequence, Hash: last.Hash}
	if durable {
		s.st.durable = len(s.st.records)
		s.st.dhead = s.st.head
	}
	if s.st.fault.loseAnswer {
		s.st.fault.loseAnswer = false
		return fmt.Errorf("append audit records: the answer was lost: %w", audit.ErrOutcomeUnknown)
	}
	return nil
}

// checkHead refuses a head that is not the last record, or that does not
// extend the last head this store saw (Store rule 13), and notes the head
// as seen. The caller holds st.mu.
func (s *Store) checkHead() error {
	head, recs := s.st.head, s.st.records
	n := len(recs)
	switch {
	case head.Sequence == 0 && n > 0:
		return fmt.Errorf("%w: the head names no record, but %d are stored", audit.ErrIntegrity, n)
	case head.Sequence > 0 && (n == 0 || recs[n-1].Sequence != head.Sequence || recs[n-1].Hash != head.Hash):
		return fmt.Errorf("%w: the head names record %d, which is not the last one stored", audit.ErrIntegrity, head.Sequence)
	}
	if l := s.last; l.Sequence > 0 {
		if head.Sequence < l.Sequence {
			return fmt.Errorf("%w: the head went back to record %d, this store saw record %d", audit.ErrIntegrity, head.Sequence, l.Sequence)
		}
		i := slices.IndexFunc(recs, func(r audit.Record) bool { return r.Sequence == l.Sequence })
		if i < 0 || recs[i].Hash != l.Hash {
			return fmt.Errorf("%w: record %d is no longer the one this store saw", audit.ErrIntegrity, l.Sequence)
		}
	}
	s.last = audit.Head{Sequence: head.Sequence, Hash: head.Hash}
	return nil
}

// track keeps the open executions of a stored record. The caller holds
// st.mu.
func (s *Store) track(r *audit.Record) {
	if r.ExecutionID == "" {
		return
	}
	if r.Terminal() {
		delete(s.st.open, r.ExecutionID)
		return
	}
	e, ok := s.st.open[r.ExecutionID]
	if !ok {
		e = &openExec{OpenExecution: audit.OpenExecution{ExecutionID: r.ExecutionID, PlanID: r.PlanID, UserID: r.UserID, Sequence: r.Sequence}}
		s.st.open[r.ExecutionID] = e
	}
	e.LastType, e.owner, e.name = r.Type, s, s.name
	if !r.OpenUntil.IsZero() {
		e.openUntil = r.OpenUntil
	}
}

// Ping reports a break, a hang or a head changed under the store; it
// never waits for an append.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.enter(ctx, true); err != nil {
		return err
	}
	defer s.st.mu.Unlock()
	return s.checkHead()
}

// Interrupted hands out, once, the open executions of closed stores of
// this store's name, and those of closed stores of other names whose
// OpenUntil has passed, and this store's own whose OpenUntil has passed
// (their terminal event was lost to a fault).
func (s *Store) Interrupted(ctx context.Context) ([]audit.OpenExecution, error) {
	if err := s.enter(ctx, false); err != nil {
		return nil, err
	}
	defer s.st.mu.Unlock()
	now := time.Now()
	var out []audit.OpenExecution
	for _, e := range s.st.open {
		if e.claimedBy != nil && !e.claimedBy.closed && !e.claimedBy.crashed {
			continue
		}
		ownerGone := e.owner.closed || e.owner.crashed
		expired := !e.openUntil.IsZero() && now.After(e.openUntil)
		if (ownerGone && e.name == s.name && e.owner != s) || (expired && (ownerGone || e.owner == s)) {
			e.claimedBy = s
			out = append(out, e.OpenExecution)
		}
	}
	slices.SortFunc(out, func(a, b audit.OpenExecution) int { return cmp.Compare(a.Sequence, b.Sequence) })
	return out, nil
}

// Claim claims this store's own open executions among ids (and those it
// claimed before), unless another live store claimed them.
func (s *Store) Claim(ctx context.Context, ids []string) ([]audit.OpenExecution, error) {
	if err := s.enter(ctx, false); err != nil {
		return nil, err
	}
	defer s.st.mu.Unlock()
	var out []audit.OpenExecution
	for _, id := range ids {
		e, ok := s.st.open[id]
		if !ok || (e.owner != s && e.claimedBy != s) {
			continue
		}
		if e.claimedBy != nil && e.claimedBy != s && !e.claimedBy.closed && !e.claimedBy.crashed {
			continue
		}
		e.claimedBy = s
		out = append(out, e.OpenExecution)
	}
	slices.SortFunc(out, func(a, b audit.OpenExecution) int { return cmp.Compare(a.Sequence, b.Sequence) })
	return out, nil
}

// List returns the durable records that match q.
func (s *Store) List(ctx context.Context, q audit.Query) (audit.Page, error) {
	if err := s.enter(ctx, false); err != nil {
		return audit.Page{}, err
	}
	recs := s.st.records[:s.st.durable]
	s.st.mu.Unlock()
	var page audit.Page
	scanned := 0
	from := max(q.From.Sequence, 1)
	start, _ := slices.BinarySearchFunc(recs, from, func(r audit.Record, seq uint64) int { return cmp.Compare(r.Sequence, seq) })
	for i := start; i < len(recs); i++ {
		// Every record scanned must follow the one before: a deleted
		// record is never skipped silently (Store rule 14).
		if want := from + uint64(i-start); recs[i].Sequence != want {
			return audit.Page{}, fmt.Errorf("%w: no record %d: it was deleted", audit.ErrDataLoss, want)
		}
		ev, _, err := audit.ParseRecord(recs[i].Line)
		if err != nil {
			return audit.Page{}, err
		}
		scanned++
		if q.Matches(&ev) {
			if len(page.Events) == q.Limit {
				page.Next = audit.Cursor{Sequence: ev.Sequence}
				return page, nil
			}
			page.Events = append(page.Events, ev)
		}
		if q.MaxScanned > 0 && scanned >= q.MaxScanned && i+1 < len(recs) {
			page.Next = audit.Cursor{Sequence: ev.Sequence + 1}
			return page, nil
		}
	}
	return page, nil
}

// ReadHashes returns stored hashes of the durable tree.
func (s *Store) ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	if err := s.enter(ctx, false); err != nil {
		return nil, err
	}
	defer s.st.mu.Unlock()
	var all []tlog.Hash
	for i, r := range s.st.records[:s.st.durable] {
		if r.Sequence != uint64(i)+1 {
			return nil, fmt.Errorf("%w: no record %d: it was deleted", audit.ErrDataLoss, i+1)
		}
		all = append(all, r.TreeHashes...)
	}
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(all)) {
			return nil, fmt.Errorf("tree hash %d is not in the durable tree (%d hashes)", x, len(all))
		}
		out[i] = all[x]
	}
	return out, nil
}

// DurableHead returns the head after the durable records.
func (s *Store) DurableHead(ctx context.Context) (audit.Head, error) {
	if err := s.enter(ctx, false); err != nil {
		return audit.Head{}, err
	}
	defer s.st.mu.Unlock()
	h := s.st.dhead
	h.Tree = slices.Clone(h.Tree)
	return h, nil
}

// SaveCheckpoint keeps the checkpoint of the largest tree.
func (s *Store) SaveCheckpoint(ctx context.Context, size uint64, checkpoint []byte) error {
	if err := s.enter(ctx, false); err != nil {
		return err
	}
	defer s.st.mu.Unlock()
	if s.st.cp == nil || size >= s.st.cpSize {
		s.st.cp, s.st.cpSize = slices.Clone(checkpoint), size
	}
	return nil
}

// LoadCheckpoint returns the latest checkpoint.
func (s *Store) LoadCheckpoint(ctx context.Context) ([]byte, error) {
	if err := s.enter(ctx, false); err != nil {
		return nil, err
	}
	defer s.st.mu.Unlock()
	if s.st.cp == nil {
		return nil, audit.ErrNoCheckpoint
	}
	return slices.Clone(s.st.cp), nil
}

// SaveCosigned keeps the cosigned checkpoint of the largest tree.
func (s *Store) SaveCosigned(ctx context.Context, size uint64, checkpoint []byte) error {
	if err := s.enter(ctx, false); err != nil {
		return err
	}
	defer s.st.mu.Unlock()
	if s.st.cos == nil || size >= s.st.cosSize {
		s.st.cos, s.st.cosSize = slices.Clone(checkpoint), size
	}
	return nil
}

// LoadCosigned returns the latest cosigned checkpoint.
func (s *Store) LoadCosigned(ctx context.Context) ([]byte, error) {
	if err := s.enter(ctx, false); err != nil {
		return nil, err
	}
	defer s.st.mu.Unlock()
	if s.st.cos == nil {
		return nil, audit.ErrNoCheckpoint
	}
	return slices.Clone(s.st.cos), nil
}

// VerifierKeys returns the pinned verifier keys.
func (s *Store) VerifierKeys(ctx context.Context) ([]string, error) {
	if err := s.enter(ctx, false); err != nil {
		return nil, err
	}
	defer s.st.mu.Unlock()
	return slices.Clone(s.st.pins), nil
}

// PinVerifierKeys pins keys if old are pinned.
func (s *Store) PinVerifierKeys(ctx context.Context, old, keys []string) ([]string, error) {
	if err := s.enter(ctx, false); err != nil {
		return nil, err
	}
	defer s.st.mu.Unlock()
	if slices.Equal(s.st.pins, old) {
		s.st.pins = slices.Clone(keys)
	}
	return slices.Clone(s.st.pins), nil
}

// FingerprintKey returns the storage's key.
func (s *Store) FingerprintKey(ctx context.Context) ([]byte, error) {
	if err := s.enter(ctx, false); err != nil {
		return nil, err
	}
	defer s.st.mu.Unlock()
	return slices.Clone(s.st.key), nil
}

// Close ends this store, making what it wrote durable, as a clean stop
// of a process does; its open executions now belong to a process that
// stopped. It is idempotent.
func (s *Store) Close() error {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if !s.closed && !s.crashed {
		s.st.durable, s.st.dhead = len(s.st.records), s.st.head
	}
	s.closed = true
	delete(s.st.stores, s)
	return nil
}

// ErrBroken is a convenient error for Storage.Break.
var ErrBroken = errors.New("storage broken by the test")
