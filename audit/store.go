package audit

import (
	"context"
	"crypto/sha256"
	"errors"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// Store keeps the records of one audit log. Everything above it (event
// encoding, the hash chain, the group commit, health, the execution
// lifecycle, checkpoints, page tokens) is written once in this package, so
// a store only keeps records in order, durably, and finds them again.
// Stores register a Driver (see Register) and pass the conformance suite
// in package audit/storetest, which has a test for every rule below:
//
//  1. Append builds on the true head: build is called exactly once per
//     attempt, with the store's current head, while the store holds
//     whatever serialises appenders (a lock, a row lock shared by every
//     replica); when build fails, nothing is stored. (AppendExtendsHead,
//     BuildErrorStoresNothing)
//  2. Durability: with durable set, Append returns nil only once the batch
//     and every batch before it are durable; without it, the batch becomes
//     durable no later than the next durable batch.
//     (DurableAndNonDurableSurviveRestart)
//  3. Honest failures: an error wrapping ErrUnavailable means nothing of
//     the batch was stored; one wrapping ErrOutcomeUnknown means the store
//     could not find out; in either case the next Append builds on the true
//     head. (OutcomeUnknownThenTrueHead, where the store can be made to
//     lose an answer)
//  4. List returns only durable records, in sequence order, those that
//     pass the filter, from the cursor on, and a cursor that continues
//     exactly where the page ended, across restarts; a listing concurrent
//     with appends sees whole batches only. (ListReturnsOnlyDurable,
//     ListFilters, ListPaging, CursorSurvivesRestart,
//     ListConcurrentWithAppend, ListScanBudget)
//  5. ctx bounds every call: a call returns promptly once ctx is done, with
//     an error wrapping ctx.Err() if it did not complete; storage that
//     hangs cannot hold a call past its ctx. (ContextBoundsEveryCall,
//     HungStorageIsBounded)
//  6. Ping reports whether Append can succeed now, without waiting behind
//     an append in progress: an error wrapping ErrUnavailable while it
//     cannot. A store that failed for good keeps failing; one that can
//     recover returns nil again once it has. (PingReportsFailure)
//  7. Interrupted hands each open execution out once, to one process, and
//     never while its owner may still be running it; Claim lets the owner
//     close its own open executions late, exclusively of any other closer.
//     (InterruptedAfterRestart, InterruptedClaimEndsWithClaimer,
//     OpenUntilBoundsOtherReplicas, ClaimIsExclusive)
//  8. The tree: records keep their TreeHashes and ReadHashes returns them;
//     DurableHead is the head after the durable records, with its edge; a
//     hash beyond the durable tree is an error. (TreeHashesAndEdgeSurviveRestart,
//     ReadHashesBeyondTheTreeFails, DurableHeadFollowsDurableAppends)
//  9. SaveCheckpoint keeps the checkpoint of the largest tree, and
//     SaveCosigned likewise the cosigned checkpoint of the largest tree,
//     apart from it. (CheckpointIsKept, CosignedIsKeptApart)
//  10. FingerprintKey is 32 random bytes made at first use and kept.
//     (FingerprintKeyIsKept)
//  11. Close is idempotent; every other call after Close fails with
//     ErrClosed. (CloseIsIdempotent, CallsAfterCloseFail)
//  12. One signing identity: PinVerifierKeys replaces the pinned
//     verifier keys only when those pinned are still the ones the caller
//     names (a compare-and-swap, shared by every process of the store),
//     and VerifierKeys returns them, across restarts.
//     (VerifierKeysArePinned)
//  13. Append never builds on a head that is not the store's last record,
//     nor on one that went back: when the stored head and records
//     disagree (no record at the head's sequence, another hash there,
//     records beyond it), or the head no longer extends the last head
//     this Store appended (rows deleted and the head moved back, a
//     restored backup under a running process), Append stores nothing and
//     fails with an error wrapping ErrIntegrity, and Ping fails likewise
//     while the disagreement lasts. (RolledBackHeadIsRefused,
//     BrokenHeadIsRefused, where the harness can make them)
//  14. List never skips a missing record silently: an unfiltered listing
//     fails on any gap in the records it reads, and a filtered one at
//     least when the record just before one it returns is missing or is
//     not the record that one extends, with an error wrapping
//     ErrDataLoss. (A filtered listing that reads only what it returns
//     cannot see every gap: rule 13, the checkpoints' consistency proofs
//     and audit verify find the others.) (ListNeverSkipsADeletedRecord,
//     where the harness can delete a record)
//  15. The keys of idempotent executions are kept as RequestStore says.
//
// A Store is used by one Log: Append is never called concurrently, the
// other methods may be, with Append and with each other.
type Store interface {
	Appender
	Reader
	CheckpointKeeper
	RequestStore

	// FingerprintKey returns the store's secret key for keyed fingerprints
	// (HMAC-SHA256) of tokens and plans and for page tokens: 32 random
	// bytes created at first use and kept with the store, so that every
	// process sharing the store uses the same key and equal plans keep
	// equal fingerprints across restarts. Whoever can read it can confirm
	// guessed tokens and parameter values against the log.
	FingerprintKey(ctx context.Context) ([]byte, error)

	// Close releases the store. It is idempotent.
	Close() error
}

// Appender is the writing side of a Store.
type Appender interface {
	// Append stores, as one atomic batch after every record already in the
	// store, the records that build makes (rules 1 to 3). With the
	// records the store keeps their TreeHashes and the tree's new edge
	// (NextTree), in the same batch, and returns that edge in the next
	// head's Tree.
	Append(ctx context.Context, durable bool, build func(Head) ([]Record, error)) error

	// Ping reports whether Append can succeed now (rule 6). The log pings
	// its store about once a second and reports the answer as health.
	Ping(ctx context.Context) error

	// Interrupted returns, in the order of their first event, the
	// executions that this process must now close with EXECUTION_FAILED
	// of phase "interrupted": open executions (a PLAN_RECEIVED or
	// EXECUTION_STARTED without a terminal event) of a process that
	// stopped, or whose terminal event their owner could not store (rule
	// 7). A store shared by several replicas hands one out only once its
	// OpenUntil has passed and its owner is gone, or once the owner has
	// restarted.
	Interrupted(ctx context.Context) ([]OpenExecution, error)

	// Claim claims, for this process to close now, those of the executions
	// named that are open and that no other live process has claimed (a
	// sweep of another replica, or an earlier claim still being closed),
	// and returns them; the others are left alone (closed already, never
	// stored, or someone else's to close). It is how the owner of an
	// execution whose terminal event an outage kept it from writing writes
	// it later, exactly once whoever else may close it (rule 7).
	Claim(ctx context.Context, executionIDs []string) ([]OpenExecution, error)
}

// Reader is the reading side of a Store.
type Reader interface {
	// List returns one page of the durable records that match q (rule 4).
	List(ctx context.Context, q Query) (Page, error)

	// ReadHashes returns the Merkle tree's stored hashes at indexes
	// (golang.org/x/mod/sumdb/tlog's stored-hash layout, see
	// Record.TreeHashes), in the order asked. Callers ask only for hashes
	// of a durable tree (indexes below tlog.StoredHashCount of
	// DurableHead's Sequence); a hash beyond it is an error, and one that
	// should be there and is not is an ErrDataLoss.
	ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error)

	// DurableHead returns the head after the records that are durable now,
	// with its tree edge: what a checkpoint may be signed for, because no
	// crash can take it back.
	DurableHead(ctx context.Context) (Head, error)
}

// CheckpointKeeper keeps a log's latest signed checkpoint, its latest
// cosigned one and the verifier keys of its signers (rules 9 and 12).
type CheckpointKeeper interface {
	// SaveCheckpoint keeps checkpoint, a signed note for a tree of size
	// leaves, as the log's latest checkpoint, unless the store holds one
	// for a larger tree already (another replica's).
	SaveCheckpoint(ctx context.Context, size uint64, checkpoint []byte) error

	// LoadCheckpoint returns the latest checkpoint that SaveCheckpoint
	// kept, or ErrNoCheckpoint.
	LoadCheckpoint(ctx context.Context) ([]byte, error)

	// SaveCosigned keeps checkpoint, a checkpoint for a tree of size
	// leaves with witnesses' cosignatures that meet the log's witness
	// policy, as the latest cosigned checkpoint, unless the store holds a
	// cosigned one for a larger tree already. It is kept apart from
	// SaveCheckpoint's: a log that is witnessed serves only this one.
	SaveCosigned(ctx context.Context, size uint64, checkpoint []byte) error

	// LoadCosigned returns the latest checkpoint that SaveCosigned kept,
	// or ErrNoCheckpoint.
	LoadCosigned(ctx context.Context) ([]byte, error)

	// VerifierKeys returns the verifier keys pinned in the store, sorted,
	// or none before the first PinVerifierKeys.
	VerifierKeys(ctx context.Context) ([]string, error)

	// PinVerifierKeys pins keys (sorted, as VerifierKeys returns them) if
	// the keys pinned now are exactly old (none: nil), and returns the
	// keys pinned after the call: keys when it pinned them, else those
	// another process pinned meanwhile.
	PinVerifierKeys(ctx context.Context, old, keys []string) ([]string, error)
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
	Type        EventType
	ExecutionID string
	PlanID      string
	UserID      string
	// TreeHashes are the Merkle tree's stored hashes that this record's
	// leaf adds (its leaf hash, LeafHash(Line), first, then one per
	// subtree it completes), at tlog stored indexes from
	// tlog.StoredHashCount(Sequence-1) on. A store keeps them with the
	// record, for ReadHashes: durably, or where it can recompute whatever
	// a crash lost from the durable records.
	TreeHashes []tlog.Hash
	// OpenUntil is set on the non-terminal events of an execution
	// (PLAN_RECEIVED, EXECUTION_STARTED): the latest time at which the
	// writing process may still be running the execution, after which a
	// store shared by replicas may let another process close it as
	// interrupted if the writer is gone. Zero on terminal events.
	OpenUntil time.Time
	// Request, on a terminal record, settles the running claim of the
	// record's execution, if there is one (see RequestStore), in the same
	// batch. It is not part of Line: answers never enter the log.
	Request *RequestOutcome
}

// Terminal reports whether the record ends its execution.
func (r *Record) Terminal() bool { return r.Type.Terminal() }

// OpenExecution is an execution without a terminal event, as
// Store.Interrupted hands it out for closing.
type OpenExecution struct {
	// ExecutionID, PlanID and UserID are those of the execution's events.
	ExecutionID string
	PlanID      string
	UserID      string
	// LastType is the type of the execution's last event: PLAN_RECEIVED
	// (Stage-3 was certainly not called) or EXECUTION_STARTED (it may have
	// been).
	LastType EventType
	// Sequence is the sequence of the execution's first event; executions
	// are closed in this order.
	Sequence uint64
}

// Query selects records for Store.List: those at or after From that pass
// the Filter, in sequence order, at most Limit of them. Log.List checks a
// caller's request before a store sees it: Limit is between 1 and
// MaxPageSize and Type is a defined type (TypeUnspecified for any).
type Query struct {
	Filter
	// From is where the listing continues: Page.Next of the page before,
	// or the zero Cursor for the first page.
	From Cursor
	// Limit is the most events to return.
	Limit int
	// MaxScanned, when positive, bounds the work of one call: the records
	// (and index entries) a store reads to find matches. A store that
	// reaches it ends the page early, with fewer than Limit events (maybe
	// none) and a Next cursor from which the listing continues, so that
	// one reader cannot hold the store, or the CPU, for long.
	MaxScanned int
}

// Cursor is a position in a log: the next record a listing considers.
type Cursor struct {
	// Sequence is the next record's sequence; 0 means the start.
	Sequence uint64
	// Offset is a store's hint where that record is (a byte offset in its
	// segment file), 0 when it has none. Page tokens carry it under a MAC,
	// but a store still checks the record it finds there.
	Offset int64
}

// Page is one page of Store.List.
type Page struct {
	// Events are the matching records in sequence order, decoded.
	Events []Event
	// Next continues the listing; the zero Cursor when no record beyond
	// the page can match.
	Next Cursor
}

// Done reports whether the listing is complete.
func (p *Page) Done() bool { return p.Next == Cursor{} }

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
	// ErrInvalidPageToken: a page token this log did not issue for these
	// filters.
	ErrInvalidPageToken = errors.New("page token was not issued by this log for these filters")
	// ErrDataLoss: records read back are not what was written (the log was
	// changed under the server).
	ErrDataLoss = errors.New("the audit log changed under the server")
	// ErrNoCheckpoint: the store holds no checkpoint yet.
	ErrNoCheckpoint = errors.New("no checkpoint has been signed for this audit log")
)
