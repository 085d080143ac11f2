package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stage4/stage4/audit"
)

// Verify walks the log in the database at rawURL from sequence 1 and
// checks it as audit.Verify checks a file: every record through one
// audit.ChainChecker (its hash, its sequence, its previous_hash), and
// what only a table can get wrong: two rows with one sequence (a
// duplicated row, or a fork: two different records claiming one place),
// a missing sequence (a deleted row), a row whose columns disagree with
// its record, and an audit_head that is not the last record. It reads one
// consistent snapshot (REPEATABLE READ, read-only), streaming rows in
// (sequence, ctid) order, so it needs constant memory and can run while
// replicas append.
//
// opts' WithRecordFunc and WithLineFunc see every good record, as
// audit.Verify's do.
//
// Damage is reported as a *audit.ChainError naming the first bad
// sequence (Offset is 0: rows have no byte offset), together with the
// result for the good records before it. Any other error means the log
// could not be read: the database is unreachable or holds no audit
// schema.
func Verify(ctx context.Context, rawURL string, opts ...audit.VerifyOption) (audit.VerifyResult, error) {
	res := audit.VerifyResult{LastHash: audit.GenesisHash}
	if !IsURL(rawURL) {
		return res, errors.New("verify audit store: the URL must start with postgres:// or postgresql://")
	}
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return res, fmt.Errorf("verify audit store: %w", err)
	}
	applyDefaults(cfg)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return res, fmt.Errorf("verify audit store %s: %w", audit.RedactLocation(rawURL), dbErrorNoReset(err))
	}
	defer conn.Close(context.Background())
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return res, fmt.Errorf("verify audit store: %w", dbErrorNoReset(err))
	}
	defer tx.Rollback(context.Background())
	var version int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM audit_schema_version").Scan(&version); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
			return res, errors.New("verify audit store: the database holds no Stage-4 audit log (no audit_schema_version table)")
		}
		return res, fmt.Errorf("verify audit store: %w", dbErrorNoReset(err))
	}
	if version < 1 || version > SchemaVersion {
		return res, fmt.Errorf("verify audit store: audit schema version %d, this binary reads 1 to %d", version, SchemaVersion)
	}
	var headSeq int64
	var headHash []byte
	if err := tx.QueryRow(ctx, "SELECT sequence, hash FROM audit_head WHERE id = 1").Scan(&headSeq, &headHash); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return res, &audit.ChainError{Sequence: 1, Reason: "the audit_head row is missing"}
		}
		return res, fmt.Errorf("verify audit store: read audit_head: %w", dbErrorNoReset(err))
	}
	rows, err := tx.Query(ctx, `SELECT sequence, time, type, execution_id, plan_id, user_id, hash, record
		FROM audit_records ORDER BY sequence, ctid`)
	if err != nil {
		return res, fmt.Errorf("verify audit store: %w", dbErrorNoReset(err))
	}
	defer rows.Close()
	v := verifier{res: &res, checker: audit.NewChainChecker(opts...)}
	for rows.Next() {
		var r verifyRow
		if err := rows.Scan(&r.seq, &r.time, &r.typ, &r.execID, &r.planID, &r.userID, &r.hash, &r.record); err != nil {
			return res, fmt.Errorf("verify audit store: %w", dbErrorNoReset(err))
		}
		if err := v.check(&r); err != nil {
			return res, err
		}
	}
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("verify audit store: %w", dbErrorNoReset(err))
	}
	head := v.checker.Head()
	switch {
	case uint64(headSeq) > head.Sequence:
		return res, &audit.ChainError{Sequence: head.Sequence + 1, Reason: fmt.Sprintf(
			"audit_head says the log ends at sequence %d but the last row is %d: rows were deleted from the end", headSeq, head.Sequence)}
	case uint64(headSeq) < head.Sequence:
		return res, &audit.ChainError{Sequence: uint64(headSeq) + 1, Reason: fmt.Sprintf(
			"rows after audit_head's sequence %d: records were added behind the store's back", headSeq)}
	case !bytes.Equal(headHash, head.Hash[:]):
		return res, &audit.ChainError{Sequence: head.Sequence, Reason: "audit_head's hash is not the hash of the last record"}
	}
	return res, nil
}

type verifyRow struct {
	seq                         int64
	time                        time.Time
	typ, execID, planID, userID string
	hash, record                []byte
}

type verifier struct {
	checker *audit.ChainChecker
	res     *audit.VerifyResult
	prev    []byte // the previous row's record, to tell a copy from a fork
}

func (v *verifier) check(r *verifyRow) error {
	want := v.checker.Head().Sequence + 1
	switch {
	case v.prev != nil && uint64(r.seq) == want-1:
		reason := fmt.Sprintf("two different rows have sequence %d: a fork", r.seq)
		if bytes.Equal(r.record, v.prev) {
			reason = fmt.Sprintf("sequence %d is stored twice: a duplicated row", r.seq)
		}
		return &audit.ChainError{Sequence: uint64(r.seq), Reason: reason}
	case uint64(r.seq) > want:
		return &audit.ChainError{Sequence: want, Reason: fmt.Sprintf(
			"sequence gap: no row with sequence %d (a deleted row), the next row has %d", want, r.seq)}
	case uint64(r.seq) != want:
		return &audit.ChainError{Sequence: want, Reason: fmt.Sprintf("a row with sequence %d", r.seq)}
	}
	ev, err := v.checker.Check(r.record)
	if err != nil {
		return err
	}
	head := v.checker.Head()
	lr := row{seq: r.seq, typ: r.typ, execID: r.execID, planID: r.planID, userID: r.userID}
	col := lr.disagreement(&ev)
	switch {
	case col != "":
	case !bytes.Equal(r.hash, head.Hash[:]):
		col = "hash"
	// The column keeps microseconds; the record nanoseconds.
	case !r.time.Equal(ev.Time.Truncate(time.Microsecond)):
		col = "time"
	}
	if col != "" {
		return &audit.ChainError{Sequence: want, Reason: fmt.Sprintf("column %s disagrees with the record", col)}
	}
	v.prev = r.record
	v.res.Records = want
	v.res.LastHash = ev.Hash
	v.res.Bytes += int64(len(r.record)) + 1 // as the file would hold it, with its newline
	return nil
}
