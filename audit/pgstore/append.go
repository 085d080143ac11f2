package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// Append stores one batch in one transaction:
//
//  1. BEGIN and lock the single audit_head row FOR UPDATE (one round trip).
//     Every replica's Append takes this lock, so batches are serialised
//     across all replicas and build always sees the true head: sequences
//     stay gapless from 1 and there is one chain.
//  2. build(head) makes the records, in this process, under the lock.
//  3. Insert the records with their tree hashes, move the head with the
//     tree's new edge and maintain the open executions (one pipelined
//     round trip).
//  4. COMMIT on its own (one round trip), so that a lost connection is
//     ambiguous only here: a failure before it certainly stored nothing.
//
// Without durable the transaction commits with synchronous_commit off:
// the commit returns before its WAL is flushed, and the next synchronous
// commit of any session flushes it too, because the WAL is one sequence.
// A crash of the database can lose such a batch, never a later batch
// without it. List shows records up to audit_head.durable_sequence only,
// which only durable batches move, so that nothing listed can be lost.
//
// ctx bounds the whole append, the resolution of a lost COMMIT included
// (audit.Store's rule 5): an append that runs out of time before COMMIT
// stored nothing (ErrUnavailable); one that runs out during COMMIT, or
// while resolving it, is ErrOutcomeUnknown, and the next append reads the
// true head under the row lock whatever happened.
func (s *Store) Append(ctx context.Context, durable bool, build func(audit.Head) ([]audit.Record, error)) error {
	if s.closed.Load() {
		return audit.ErrClosed
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("append audit records: %w", s.dbError(err))
	}
	defer conn.Release() // a connection left inside a transaction is destroyed, not reused
	head, err := s.lockHead(ctx, conn, durable)
	if err != nil {
		s.rollback(conn)
		if errors.Is(err, audit.ErrIntegrity) {
			return fmt.Errorf("append audit records: %w", err)
		}
		return fmt.Errorf("append audit records: %w", s.dbError(err))
	}
	recs, err := build(head)
	if err != nil {
		s.rollback(conn)
		return err
	}
	if err := checkBatch(head, recs); err != nil {
		s.rollback(conn)
		return fmt.Errorf("append audit records: %w", err)
	}
	if len(recs) == 0 {
		s.rollback(conn)
		return nil
	}
	tree, err := audit.NextTree(head, recs)
	if err != nil {
		s.rollback(conn)
		return fmt.Errorf("append audit records: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, s.cfg.writeTimeout)
	defer cancel()
	if err := s.write(wctx, conn, recs, tree, durable); err != nil {
		s.rollback(conn)
		return fmt.Errorf("append audit records: %w", s.dbError(err))
	}
	res, err := conn.Conn().PgConn().Exec(wctx, "COMMIT").ReadAll()
	if err == nil {
		if len(res) == 1 && res[0].CommandTag.String() == "COMMIT" {
			s.see(audit.Head{Sequence: recs[len(recs)-1].Sequence, Hash: recs[len(recs)-1].Hash})
			return nil
		}
		// COMMIT of a failed transaction answers ROLLBACK without an error.
		return fmt.Errorf("append audit records: the transaction was rolled back")
	}
	return s.resolve(ctx, recs[len(recs)-1], err)
}

// lockHead begins the transaction and reads the head under its row lock,
// checked against the records and against the last head this replica saw
// (see integrity.go), in one simple-protocol round trip.
func (s *Store) lockHead(ctx context.Context, conn *pgxpool.Conn, durable bool) (audit.Head, error) {
	last := s.seen()
	q := "BEGIN; " + headQuery(last.Sequence, true)
	if !durable && !s.cfg.syncNonDurable {
		q = "BEGIN; SET LOCAL synchronous_commit = off; " + headQuery(last.Sequence, true)
	}
	res, err := conn.Conn().PgConn().Exec(ctx, q).ReadAll()
	if err != nil {
		return audit.Head{}, err
	}
	head, err := checkedHead(res[len(res)-1], last)
	if err == nil {
		s.see(head)
	}
	return head, err
}

// selectHead reads the head in text form, for the simple protocol.
const selectHead = "SELECT sequence, encode(hash, 'hex'), encode(tree, 'hex') FROM audit_head WHERE id = 1"

// parseHead parses the result of selectHead.
func parseHead(res *pgconn.Result) (audit.Head, error) {
	if len(res.Rows) != 1 || len(res.Rows[0]) != 3 {
		return audit.Head{}, errors.New("the audit_head row is missing: the schema was damaged")
	}
	return parseHeadRow(res.Rows[0])
}

// checkBatch refuses records that would not extend head by one sequence
// each: a store must never break the chain, whoever made the records.
func checkBatch(head audit.Head, recs []audit.Record) error {
	for i := range recs {
		r := &recs[i]
		if want := head.Sequence + uint64(i) + 1; r.Sequence != want {
			return fmt.Errorf("record %d of the batch has sequence %d, want %d", i, r.Sequence, want)
		}
		if len(r.Line) == 0 || len(r.Line) >= audit.MaxRecordBytes {
			return fmt.Errorf("record %d has %d bytes", r.Sequence, len(r.Line))
		}
	}
	return nil
}

const insertRecords = `INSERT INTO audit_records (sequence, time, type, execution_id, plan_id, user_id, hash, record, tree)
SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::bytea[], $9::bytea[])`

// upsertOpen records executions that a batch opens or continues. A row
// already there keeps its first sequence; the latest event sets its type,
// owner and, when it has one, its deadline.
const upsertOpen = `INSERT INTO audit_open (execution_id, sequence, plan_id, user_id, last_type, open_until, owner_name, owner_instance)
SELECT u.*, $7, $8 FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) AS u
ON CONFLICT (execution_id) DO UPDATE SET
	last_type = excluded.last_type,
	open_until = coalesce(excluded.open_until, audit_open.open_until),
	owner_name = excluded.owner_name,
	owner_instance = excluded.owner_instance`

// write sends the batch's statements in one pipelined round trip.
func (s *Store) write(ctx context.Context, conn *pgxpool.Conn, recs []audit.Record, tree []tlog.Hash, durable bool) error {
	n := len(recs)
	seqs := make([]int64, n)
	times := make([]time.Time, n)
	types := make([]string, n)
	execs, plans, users := make([]string, n), make([]string, n), make([]string, n)
	hashes, lines, trees := make([][]byte, n), make([][]byte, n), make([][]byte, n)
	for i := range recs {
		r := &recs[i]
		seqs[i] = int64(r.Sequence)
		times[i] = r.Time
		types[i] = r.Type.String()
		execs[i], plans[i], users[i] = column(r.ExecutionID), column(r.PlanID), column(r.UserID)
		hashes[i], lines[i], trees[i] = r.Hash[:], r.Line, concat(r.TreeHashes)
	}
	b := &pgx.Batch{}
	if s.cfg.copyFrom {
		rows := make([][]any, n)
		for i := range rows {
			rows[i] = []any{seqs[i], times[i], types[i], execs[i], plans[i], users[i], hashes[i], lines[i], trees[i]}
		}
		if _, err := conn.CopyFrom(ctx, pgx.Identifier{"audit_records"},
			[]string{"sequence", "time", "type", "execution_id", "plan_id", "user_id", "hash", "record", "tree"},
			pgx.CopyFromRows(rows)); err != nil {
			return err
		}
	} else {
		b.Queue(insertRecords, seqs, times, types, execs, plans, users, hashes, lines, trees)
	}
	last := &recs[n-1]
	if durable {
		// Listed from now on: this batch's commit is durable before it is
		// visible, and it makes every batch before it durable (the WAL is
		// one sequence).
		b.Queue("UPDATE audit_head SET sequence = $1, hash = $2, tree = $3, durable_sequence = $1 WHERE id = 1", int64(last.Sequence), last.Hash[:], concat(tree))
	} else {
		b.Queue("UPDATE audit_head SET sequence = $1, hash = $2, tree = $3 WHERE id = 1", int64(last.Sequence), last.Hash[:], concat(tree))
	}
	open, closed := openChanges(recs)
	if len(closed) > 0 {
		b.Queue("DELETE FROM audit_open WHERE execution_id = ANY($1::text[])", closed)
	}
	if len(open) > 0 {
		ids, seqs := make([]string, len(open)), make([]int64, len(open))
		plans, users, types := make([]string, len(open)), make([]string, len(open)), make([]string, len(open))
		until := make([]pgtype.Timestamptz, len(open))
		for i, o := range open {
			ids[i], seqs[i], plans[i], users[i], types[i] = o.id, o.seq, o.plan, o.user, o.last
			until[i] = pgtype.Timestamptz{Time: o.until, Valid: !o.until.IsZero()}
		}
		b.Queue(upsertOpen, ids, seqs, plans, users, types, until, s.cfg.name, s.instance)
	}
	queueSettlements(b, recs)
	return conn.SendBatch(ctx, b).Close()
}

// concat is a list of hashes as audit_records.tree and audit_head.tree
// hold it: back to back.
func concat(tree []tlog.Hash) []byte {
	b := make([]byte, 0, len(tree)*tlog.HashSize)
	for _, h := range tree {
		b = append(b, h[:]...)
	}
	return b
}

type openChange struct {
	id, plan, user, last string
	seq                  int64
	until                time.Time
}

// openChanges folds a batch into its effect on audit_open: executions left
// open (opened or continued) and executions it ends. An execution opened
// and ended within the batch is only deleted, which finds nothing.
func openChanges(recs []audit.Record) (open []*openChange, closed []string) {
	state := map[string]*openChange{} // nil: ended in this batch
	var order []string
	for i := range recs {
		r := &recs[i]
		if r.ExecutionID == "" {
			continue
		}
		id := column(r.ExecutionID)
		o, seen := state[id]
		if !seen {
			order = append(order, id)
		}
		switch r.Type {
		case audit.ExecutionCompleted, audit.ExecutionFailed:
			state[id] = nil
		case audit.PlanReceived, audit.ExecutionStarted:
			if o == nil {
				o = &openChange{id: id, plan: column(r.PlanID), user: column(r.UserID), seq: int64(r.Sequence)}
				state[id] = o
			}
			o.last = r.Type.String()
			if !r.OpenUntil.IsZero() {
				o.until = r.OpenUntil
			}
		}
	}
	for _, id := range order {
		if o, ok := state[id]; ok && o == nil {
			closed = append(closed, id)
		} else if ok {
			open = append(open, o)
		}
	}
	return open, closed
}

// column is how a string member of a record is kept in a text column:
// PostgreSQL text cannot hold the NUL character, which a record's JSON
// can (as \u0000), so NUL becomes U+FFFD. Readers compare the record's
// members through the same mapping and filter exactly on the record.
func column(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// rollback ends a transaction whose connection may still be usable; when
// it is not, the pool destroys the connection on release.
func (s *Store) rollback(conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.pingTimeout)
	defer cancel()
	_, _ = conn.Conn().PgConn().Exec(ctx, "ROLLBACK").ReadAll()
}

// resolve finds out, after a COMMIT whose answer was lost, whether the
// batch ending with last was stored. It waits for the head's row lock:
// the lost transaction held it, so once it is granted that transaction
// has ended one way or the other (PostgreSQL ends a session whose client
// is gone, at the latest after idle_in_transaction_session_timeout), and
// the record at last.Sequence is either last or not. It retries on other
// connections until the resolve timeout.
func (s *Store) resolve(ctx context.Context, last audit.Record, commitErr error) error {
	s.dbError(commitErr) // drop idle connections that died with this one
	deadline := time.Now().Add(s.cfg.resolveTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	wait := 50 * time.Millisecond
	for {
		actx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		landed, err := s.landed(actx, last)
		cancel()
		if err == nil {
			if landed {
				s.see(audit.Head{Sequence: last.Sequence, Hash: last.Hash})
				return nil
			}
			return fmt.Errorf("append audit records: the connection was lost during COMMIT and the batch was not stored: %w: %w", audit.ErrUnavailable, commitErr)
		}
		if time.Until(deadline) < wait {
			return fmt.Errorf("append audit records: the connection was lost during COMMIT (%v) and whether the batch was stored cannot be established: %w: %w: %w",
				commitErr, audit.ErrUnavailable, audit.ErrOutcomeUnknown, err)
		}
		// Backing off between attempts at an unreachable database.
		time.Sleep(wait)
		wait = min(2*wait, time.Second)
	}
}

func (s *Store) landed(ctx context.Context, last audit.Record) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, s.dbError(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT 1 FROM audit_head WHERE id = 1 FOR SHARE"); err != nil {
		return false, s.dbError(err)
	}
	var hash []byte
	err = tx.QueryRow(ctx, "SELECT hash FROM audit_records WHERE sequence = $1", int64(last.Sequence)).Scan(&hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, s.dbError(err)
	}
	return bytes.Equal(hash, last.Hash[:]), nil
}
