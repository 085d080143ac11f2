package audit

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// Store keeps the records of one audit log: a local file (package
// audit/filestore) or a PostgreSQL database shared by several replicas
// (package audit/pgstore). Everything above it (the group commit, the hash
// chain, the execution lifecycle, verification rules) is written once in
// this package, so a store only has to keep records in order, durably,
// and find them again. Package audit/storetest is the conformance suite
// every store passes.
//
// A Store is used by one Log; Append is never called concurrently.
type Store interface {
	// Append stores, as one atomic batch after every record already in the
	// store, the records that build makes. build is called exactly once
	// per attempt, with the store's current head, while the store holds
	// whatever serialises appenders (an in-process lock, a row lock shared
	// by every replica), so that the records extend the true head and no
	// two batches can fork the chain or reuse a sequence number. When build
	// returns an error, nothing is stored and Append returns that error.
	// With the records the store keeps their TreeHashes and the tree's new
	// edge (NextTree), in the same batch, and returns that edge in the
	// next head's Tree.
	//
	// With durable set, Append returns nil only once the batch, and every
	// batch before it, is durable. Without it, the batch may still be
	// volatile when Append returns, but it becomes durable no later than
	// the next durable batch: the log relies on this to make PLAN_RECEIVED
	// durable with the event after it.
	//
	// When the store cannot tell whether a batch was stored (a connection
	// lost during COMMIT), it must find out before it returns: nil if the
	// batch is there, an error if it is not, and an error wrapping
	// ErrOutcomeUnknown only if it still cannot tell. In every case the
	// next Append extends the store's true head, whatever happened.
	Append(ctx context.Context, durable bool, build func(Head) ([]Record, error)) error

	// List returns one page of the records that match q, in sequence order.
	// Only durable records are listed. Page tokens are the store's own,
	// bound to q's filters (see Query.FilterDigest): a token issued for
	// other filters, or by another log, fails with ErrInvalidPageToken.
	List(ctx context.Context, q Query) (Page, error)

	// Ping reports whether Append can succeed now. A store that failed for
	// good (a file whose fsync failed) returns that failure forever; a
	// store that can recover (a database that was unreachable) returns nil
	// again once it has. The log pings its store about once a second and
	// reports the answer as the gateway's health.
	Ping(ctx context.Context) error

	// Interrupted returns, in the order of their first event, the
	// executions that this process must now close with EXECUTION_FAILED of
	// phase "interrupted": open executions (a
	// PLAN_RECEIVED or EXECUTION_STARTED without a terminal event) of a
	// process that stopped. Each open execution is returned exactly once,
	// to exactly one process, across every process that shares the store,
	// and never while the process that owns it may still be running it:
	// a store shared by several replicas hands one out only once its
	// OpenUntil has passed and its owner is gone, or once the owner has
	// restarted (see the store's documentation).
	Interrupted(ctx context.Context) ([]OpenExecution, error)

	// ReadHashes returns the Merkle tree's stored hashes at indexes
	// (golang.org/x/mod/sumdb/tlog's stored-hash layout, see
	// Record.TreeHashes), in the order asked. Callers ask only for hashes
	// of a durable tree (indexes below tlog.StoredHashCount of DurableHead's
	// Sequence), which tlog.ProveRecord and tlog.ProveTree do for a tree
	// size within it. A hash that should be there and is not is an
	// ErrDataLoss.
	ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error)

	// DurableHead returns the head after the records that are durable now,
	// with its tree edge: what a checkpoint may be signed for, because no
	// crash can take it back.
	DurableHead(ctx context.Context) (Head, error)

	// SaveCheckpoint keeps checkpoint, a signed note for a tree of size
	// leaves, as the log's latest checkpoint, unless the store holds one
	// for a larger tree already (another replica's).
	SaveCheckpoint(ctx context.Context, size uint64, checkpoint []byte) error

	// LoadCheckpoint returns the latest checkpoint that SaveCheckpoint
	// kept, or ErrNoCheckpoint.
	LoadCheckpoint(ctx context.Context) ([]byte, error)

	// FingerprintKey returns the store's secret key for keyed fingerprints
	// (HMAC-SHA256) of tokens and plans: 32 random bytes created at first
	// use and kept with the store, so that every process sharing the store
	// uses the same key and equal plans keep equal fingerprints across
	// restarts. Whoever can read it can confirm guessed tokens and
	// parameter values against the log.
	FingerprintKey(ctx context.Context) ([]byte, error)

	// Close releases the store. Appends after Close fail.
	Close() error
}

// Head is the end of a log's hash chain.
type Head struct {
	// Sequence is the sequence number of the last record, 0 when the log
	// is empty.
	Sequence uint64
	// Hash is the hash of the last record, all zeros when the log is empty
	// (the previous_hash of sequence 1 is GenesisHash).
	Hash [sha256.Size]byte
	// Tree is the right edge of the log's Merkle tree after Sequence
	// leaves: the hashes at EdgeIndexes(Sequence), largest subtree first
	// (one per set bit of Sequence, none for an empty log). A store keeps
	// it with the head, as NextTree computes it, so that the next batch's
	// tree hashes are computed from it alone.
	Tree []tlog.Hash
}

// Record is one audit record as a store keeps it: its exact bytes, which
// its hash covers, and the members a store indexes. A store must return
// Line byte for byte as it was given; the other fields are copies of
// members of Line, kept so that stores need not parse it.
type Record struct {
	// Line is the record, one JSON object without its trailing newline, in
	// the format of docs/AUDIT_LOG.md.
	Line []byte
	// Sequence is the record's sequence number: the head's plus one for
	// the first record of a batch, then one more for each next one.
	Sequence uint64
	// Hash is the record's hash (the hash member of Line), the head after
	// this record.
	Hash [sha256.Size]byte
	// Time is the record's time member.
	Time time.Time
	// Type, ExecutionID, PlanID and UserID are the record's members of
	// those names.
	Type        stage4v1.AuditEventType
	ExecutionID string
	PlanID      string
	UserID      string
	// TreeHashes are the Merkle tree's stored hashes that this record's
	// leaf adds (its leaf hash, LeafHash(Line), first, then one per
	// subtree it completes), at tlog stored indexes from
	// tlog.StoredHashCount(Sequence-1) on. A store keeps them with the
	// record, for ReadHashes: durably, or (the file store) where it can
	// recompute whatever a crash lost from the durable records.
	TreeHashes []tlog.Hash
	// OpenUntil is set on the non-terminal events of an execution
	// (PLAN_RECEIVED, EXECUTION_STARTED): the latest time at which the
	// writing process may still be running the execution, after which a
	// store shared by replicas may let another process close it as
	// interrupted if the writer is gone. Zero on terminal events and on
	// records that open no execution.
	OpenUntil time.Time
}

// Terminal reports whether the record ends its execution.
func (r *Record) Terminal() bool { return IsTerminal(r.Type) }

// IsTerminal reports whether events of type t end an execution.
func IsTerminal(t stage4v1.AuditEventType) bool {
	return t == stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED ||
		t == stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED
}

// OpenExecution is an execution without a terminal event, as Store.Interrupted
// hands it out for closing.
type OpenExecution struct {
	// ExecutionID, PlanID and UserID are those of the execution's events.
	ExecutionID string
	PlanID      string
	UserID      string
	// LastType is the type of the execution's last event: PLAN_RECEIVED
	// (Stage-3 was certainly not called) or EXECUTION_STARTED (it may have
	// been).
	LastType stage4v1.AuditEventType
	// Sequence is the sequence of the execution's first event; executions
	// are closed in this order.
	Sequence uint64
}

// Query selects records for Store.List. Log.List checks it before a store
// sees it: PageSize is between 1 and MaxPageSize and Type is a defined
// type (UNSPECIFIED for any).
type Query struct {
	// ExecutionID, PlanID and UserID, when not empty, must equal the
	// record's members of those names.
	ExecutionID string
	PlanID      string
	UserID      string
	// Type, unless UNSPECIFIED, must equal the record's type.
	Type stage4v1.AuditEventType
	// PageSize is the most records to return.
	PageSize int
	// PageToken is empty for the first page, or a Page.NextPageToken that
	// the same store issued for the same filters.
	PageToken string
}

// Matches reports whether the record of ev passes q's filters.
func (q *Query) Matches(ev *stage4v1.AuditEvent) bool {
	return (q.ExecutionID == "" || q.ExecutionID == ev.GetExecutionId()) &&
		(q.PlanID == "" || q.PlanID == ev.GetPlanId()) &&
		(q.UserID == "" || q.UserID == ev.GetUserId()) &&
		(q.Type == stage4v1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED || q.Type == ev.GetType())
}

// Page is one page of List.
type Page struct {
	// Events are the matching records in sequence order, decoded.
	Events []*stage4v1.AuditEvent
	// NextPageToken continues the listing; empty on the last page.
	NextPageToken string
}

// Errors a Store returns, wrapped, for the log and the RPC edge to branch on.
var (
	// ErrClosed: the log or store was closed.
	ErrClosed = errors.New("audit log closed")
	// ErrUnavailable: the store cannot take or serve records now (a failed
	// file, an unreachable database). Nothing was stored.
	ErrUnavailable = errors.New("audit store unavailable")
	// ErrOutcomeUnknown: the store could not establish whether a batch was
	// stored.
	ErrOutcomeUnknown = errors.New("audit store: outcome of the append unknown")
	// ErrInvalidPageToken: a page token this store did not issue for these
	// filters.
	ErrInvalidPageToken = errors.New("page token was not issued by this log for these filters")
	// ErrDataLoss: records read back are not what was written (the log was
	// changed under the server).
	ErrDataLoss = errors.New("the audit log changed under the server")
	// ErrNoCheckpoint: the store holds no checkpoint yet.
	ErrNoCheckpoint = errors.New("no checkpoint has been signed for this audit log")
)

// FilterDigestLen is the length of Query.FilterDigest.
const FilterDigestLen = 16

// FilterDigest is a digest of q's filters (not its paging), for a store to
// put into its page tokens and compare on the way back, so that a token is
// honoured only for the filters it was issued for.
func (q *Query) FilterDigest() [FilterDigestLen]byte {
	var in []byte
	for _, s := range []string{q.ExecutionID, q.PlanID, q.UserID} {
		in = binary.AppendUvarint(in, uint64(len(s)))
		in = append(in, s...)
	}
	in = binary.AppendUvarint(in, uint64(q.Type))
	sum := sha256.Sum256(in)
	var d [FilterDigestLen]byte
	copy(d[:], sum[:])
	return d
}
