package pgstore

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// An operator with write access to the database can change the log under
// running replicas: delete the newest rows and move audit_head back, set
// the head's hash to anything, delete a row in the middle. Each append
// checks, under the head's row lock and in the same statement that reads
// the head, that the head is the last record (the row at its sequence
// exists with its hash and the last hash of the tree edge, and no row lies
// beyond it) and that it extends the last head this replica appended to
// (the row at that sequence still holds that hash): a replica never builds
// on a changed head, nor one moved back below what it wrote, and fails
// with audit.ErrIntegrity instead, which halts its log (Store rule 13).
// Ping makes the same check without the lock, so that a change shows
// within a second without traffic. The last head seen is also the one
// Ping and DurableHead (each signing) read: a replica that only watched
// others append still refuses a head moved back below what it saw. A rollback of the whole database (a
// restored backup) together with a restart of every replica is beyond
// what a replica can see: witnesses see it.

// headQuery reads the head and what checkedHead compares it with, in text
// form for the simple protocol: the head's sequence, hash and tree edge;
// the hash and last tree hash of the record at the head's sequence (NULL
// when there is none); whether a record lies beyond it (max, which reads
// the primary key's last entry: an EXISTS over sequence > head, whose
// bound the planner does not know, was a sequential scan of the table,
// 12 ms at 200,000 rows); and the hash of
// the record at sequence last (NULL when there is none). Locking, it is
// two statements: the head's row lock first, then the read, whose own
// snapshot (READ COMMITTED takes one per statement) is taken once the
// lock is granted and so sees the records the previous holder committed
// (a locking read that waited sees the new head row but the old snapshot
// of every other row).
func headQuery(last uint64, lock bool) string {
	q := `SELECT h.sequence, encode(h.hash, 'hex'), encode(h.tree, 'hex'),
	encode(r.hash, 'hex'), encode(substring(r.tree FROM greatest(length(r.tree) - 31, 1)), 'hex'),
	coalesce((SELECT max(sequence) FROM audit_records), 0) > h.sequence,
	encode((SELECT hash FROM audit_records WHERE sequence = ` + strconv.FormatUint(last, 10) + `), 'hex')
FROM audit_head h LEFT JOIN audit_records r ON r.sequence = h.sequence WHERE h.id = 1`
	if lock {
		q = "SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE; " + q
	}
	return q
}

// checkedHead parses the result of headQuery and checks it against last,
// the last head this replica saw (zero for none).
func checkedHead(res *pgconn.Result, last audit.Head) (audit.Head, error) {
	if len(res.Rows) != 1 || len(res.Rows[0]) != 7 {
		return audit.Head{}, fmt.Errorf("%w: the audit_head row is missing", audit.ErrIntegrity)
	}
	row := res.Rows[0]
	head, err := parseHeadRow(row[:3])
	if err != nil {
		return head, err
	}
	recHash, recTree, beyond, lastHash := row[3], row[4], string(row[5]) == "t", row[6]
	var edgeEnd []byte
	if n := len(head.Tree); n > 0 {
		edgeEnd = head.Tree[n-1][:]
	}
	switch {
	case head.Sequence > 0 && recHash == nil:
		return head, fmt.Errorf("%w: audit_head names record %d, which audit_records does not hold: rows were deleted", audit.ErrIntegrity, head.Sequence)
	case head.Sequence > 0 && !hexEqual(recHash, head.Hash[:]):
		return head, fmt.Errorf("%w: audit_head says record %d has hash %s, the record has %s: the head or the record was changed",
			audit.ErrIntegrity, head.Sequence, audit.FormatHash(head.Hash), "sha256:"+string(recHash))
	case head.Sequence > 0 && !hexEqual(recTree, edgeEnd):
		return head, fmt.Errorf("%w: audit_head's tree edge does not end with the last tree hash of record %d: the head or the record was changed",
			audit.ErrIntegrity, head.Sequence)
	case beyond:
		return head, fmt.Errorf("%w: audit_records holds records beyond record %d, the one audit_head names: the head was moved back",
			audit.ErrIntegrity, head.Sequence)
	}
	if last.Sequence == 0 {
		return head, nil
	}
	switch {
	case head.Sequence < last.Sequence:
		return head, fmt.Errorf("%w: audit_head went back to record %d, and this replica saw record %d (hash %s): records were deleted and the head moved back",
			audit.ErrIntegrity, head.Sequence, last.Sequence, audit.FormatHash(last.Hash))
	case lastHash == nil:
		return head, fmt.Errorf("%w: record %d, which this replica saw, is no longer in audit_records: it was deleted", audit.ErrIntegrity, last.Sequence)
	case !hexEqual(lastHash, last.Hash[:]):
		return head, fmt.Errorf("%w: record %d now has hash %s, this replica saw %s: the log was rewritten",
			audit.ErrIntegrity, last.Sequence, "sha256:"+string(lastHash), audit.FormatHash(last.Hash))
	}
	return head, nil
}

// hexEqual compares a hex column with bytes.
func hexEqual(col, b []byte) bool {
	d := make([]byte, hex.DecodedLen(len(col)))
	n, err := hex.Decode(d, col)
	return err == nil && bytes.Equal(d[:n], b)
}

// seen returns the last head this replica appended to or made.
func (s *Store) seen() audit.Head {
	s.lastMu.Lock()
	defer s.lastMu.Unlock()
	return s.last
}

// see notes a head this replica read under the lock or committed.
func (s *Store) see(h audit.Head) {
	s.lastMu.Lock()
	defer s.lastMu.Unlock()
	if h.Sequence >= s.last.Sequence {
		s.last = audit.Head{Sequence: h.Sequence, Hash: h.Hash}
	}
}

// checkHead is Ping's check: the head read without a lock (a snapshot in
// which the head and its records were committed together).
func (s *Store) checkHead(ctx context.Context) error {
	last := s.seen() // before the snapshot, which then reaches it
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return s.dbError(err)
	}
	defer conn.Release()
	res, err := conn.Conn().PgConn().Exec(ctx, headQuery(last.Sequence, false)).ReadAll()
	if err != nil {
		return s.dbError(err)
	}
	head, err := checkedHead(res[0], last)
	if err == nil {
		s.see(head)
	}
	return err
}

// parseHeadRow parses sequence, hash and tree (hex) of audit_head.
func parseHeadRow(row [][]byte) (audit.Head, error) {
	var head audit.Head
	seq, err := strconv.ParseUint(string(row[0]), 10, 64)
	if err != nil {
		return head, fmt.Errorf("read audit_head: %w", err)
	}
	if n, err := hex.Decode(head.Hash[:], row[1]); err != nil || n != len(head.Hash) {
		return head, fmt.Errorf("%w: read audit_head: the hash is not 32 bytes", audit.ErrIntegrity)
	}
	tree := make([]byte, hex.DecodedLen(len(row[2])))
	if _, err := hex.Decode(tree, row[2]); err != nil {
		return head, fmt.Errorf("read audit_head: tree: %w", err)
	}
	head.Sequence = seq
	for i := 0; i+tlog.HashSize <= len(tree); i += tlog.HashSize {
		head.Tree = append(head.Tree, tlog.Hash(tree[i:i+tlog.HashSize]))
	}
	if want := len(audit.EdgeIndexes(int64(seq))); len(head.Tree) != want {
		return head, fmt.Errorf("%w: audit_head holds %d tree hashes for %d records, want %d", audit.ErrIntegrity, len(head.Tree), seq, want)
	}
	return head, nil
}
