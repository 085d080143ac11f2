package pgstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/stage4/stage4/audit"
)

// List returns one page of the records matching q, by keyset paging on
// sequence: WHERE <filters> AND sequence >= <from> ORDER BY sequence
// LIMIT limit + 1, served by the (column, sequence) indexes, so that the
// cost of a page does not grow with the log. Only records up to
// audit_head.durable_sequence are read (see Append). With q.MaxScanned
// the query also stops at sequence from + MaxScanned, which bounds the
// index range the database reads however few rows match; the page then
// ends there. Records are returned as decoded from their stored bytes; a
// record whose hash does not match its bytes, whose columns disagree
// with it, or a sequence missing from an unfiltered listing fails the
// call with audit.ErrDataLoss.
func (s *Store) List(ctx context.Context, q audit.Query) (audit.Page, error) {
	if s.closed.Load() {
		return audit.Page{}, audit.ErrClosed
	}
	if q.Limit < 1 {
		return audit.Page{}, fmt.Errorf("list audit records: limit %d", q.Limit)
	}
	from := max(q.From.Sequence, 1)
	end := uint64(0) // no bound
	if q.MaxScanned > 0 {
		end = from + uint64(q.MaxScanned)
	}
	sql, args := listQuery(&q, from, end)
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return audit.Page{}, fmt.Errorf("list audit records: %w", s.dbError(err))
	}
	defer rows.Close()
	var page audit.Page
	var durable int64
	n, want := 0, from
	for rows.Next() {
		var r row
		var seq pgtype.Int8
		var typ, execID, planID, userID pgtype.Text
		var prev []byte
		if err := rows.Scan(&durable, &seq, &typ, &execID, &planID, &userID, &r.record, &prev); err != nil {
			return audit.Page{}, fmt.Errorf("list audit records: %w", s.dbError(err))
		}
		if !seq.Valid {
			break // the durable head alone: no row matched
		}
		r.seq, r.typ, r.execID, r.planID, r.userID = seq.Int64, typ.String, execID.String, planID.String, userID.String
		if n == q.Limit {
			page.Next = audit.Cursor{Sequence: uint64(r.seq)}
			break
		}
		if q.Filter.Empty() && uint64(r.seq) != want {
			return audit.Page{}, fmt.Errorf("%w: no record %d: a row was deleted from audit_records", audit.ErrIntegrity, want)
		}
		want = uint64(r.seq) + 1
		n++
		ev, err := r.decode()
		if err != nil {
			return audit.Page{}, fmt.Errorf("list audit records: %w", err)
		}
		if !q.Filter.Empty() {
			if err := checkLink(&ev, prev); err != nil {
				return audit.Page{}, fmt.Errorf("list audit records: %w", err)
			}
		}
		// The columns may match where the record does not (NUL mapped to
		// U+FFFD); the record decides.
		if q.Matches(&ev) {
			page.Events = append(page.Events, ev)
		}
	}
	if err := rows.Err(); err != nil {
		return audit.Page{}, fmt.Errorf("list audit records: %w", s.dbError(err))
	}
	if page.Done() && end > 0 && end <= uint64(durable) {
		// Stopped by the scan bound, with durable records beyond it.
		page.Next = audit.Cursor{Sequence: end}
	}
	if q.Filter.Empty() && page.Done() && want <= uint64(durable) && (end == 0 || want < end) {
		return audit.Page{}, fmt.Errorf("%w: the log ends at record %d, but audit_head says %d are durable: rows were deleted", audit.ErrIntegrity, want-1, durable)
	}
	return page, nil
}

// listQuery is the SQL of a page: the durable head joined with the
// matching rows, so that the answer says how far the durable records
// reach even when no row matches. end, when not 0, bounds the sequences
// read.
func listQuery(q *audit.Query, from, end uint64) (string, []any) {
	var b strings.Builder
	// A filtered listing reads each listed record's predecessor's hash too
	// (one primary-key probe each), to find a record deleted before it.
	prev := "NULL::bytea"
	if !q.Filter.Empty() {
		prev = "(SELECT p.hash FROM audit_records p WHERE p.sequence = a.sequence - 1)"
	}
	b.WriteString(`SELECT h.durable_sequence, r.sequence, r.type, r.execution_id, r.plan_id, r.user_id, r.record, r.prev
FROM audit_head h LEFT JOIN LATERAL (
	SELECT a.sequence, a.type, a.execution_id, a.plan_id, a.user_id, a.record, ` + prev + ` AS prev FROM audit_records a
	WHERE a.sequence >= $1 AND a.sequence <= h.durable_sequence`)
	args := []any{int64(from)}
	add := func(col string, v any) {
		args = append(args, v)
		b.WriteString(" AND a." + col + " $" + strconv.Itoa(len(args)))
	}
	if end > 0 {
		add("sequence <", int64(end))
	}
	if q.ExecutionID != "" {
		add("execution_id =", column(q.ExecutionID))
	}
	if q.PlanID != "" {
		add("plan_id =", column(q.PlanID))
	}
	if q.UserID != "" {
		add("user_id =", column(q.UserID))
	}
	if q.Type != audit.TypeUnspecified {
		add("type =", q.Type.String())
	}
	args = append(args, q.Limit+1)
	b.WriteString(" ORDER BY a.sequence LIMIT $" + strconv.Itoa(len(args)) + `
) r ON true WHERE h.id = 1 ORDER BY r.sequence`)
	return b.String(), args
}

// checkLink checks that a listed record's previous_hash is the hash of the
// row before it (prev, nil when there is none): a filtered listing does
// not read the rows between the records it returns, and so would skip a
// deleted one silently (Store rule 14). It catches a deletion just before
// a listed record; the head's check on every append, the checkpoints'
// consistency proofs and audit verify catch the others.
func checkLink(ev *audit.Event, prev []byte) error {
	if ev.Sequence == 1 {
		return nil
	}
	if prev == nil {
		return fmt.Errorf("%w: no record %d before record %d: it was deleted", audit.ErrIntegrity, ev.Sequence-1, ev.Sequence)
	}
	if len(prev) != 32 || audit.FormatHash([32]byte(prev)) != ev.PreviousHash {
		return fmt.Errorf("%w: record %d is not the one record %d extends (%s): a record was replaced", audit.ErrIntegrity, ev.Sequence-1, ev.Sequence, ev.PreviousHash)
	}
	return nil
}

// row is one audit_records row as List reads it.
type row struct {
	seq                         int64
	typ, execID, planID, userID string
	record                      []byte
}

// decode parses the stored record and checks that the row's columns are
// the record's members, which the indexes and filters rely on.
func (r *row) decode() (audit.Event, error) {
	ev, _, err := audit.ParseRecord(r.record)
	if err != nil {
		return audit.Event{}, fmt.Errorf("sequence %d: %w", r.seq, err)
	}
	if col := r.disagreement(&ev); col != "" {
		return audit.Event{}, fmt.Errorf("%w: sequence %d: column %s disagrees with the record", audit.ErrDataLoss, r.seq, col)
	}
	return ev, nil
}

// disagreement names the first column that is not what the record says,
// or returns "".
func (r *row) disagreement(ev *audit.Event) string {
	switch {
	case ev.Sequence != uint64(r.seq):
		return "sequence"
	case ev.Type.String() != r.typ:
		return "type"
	case column(ev.ExecutionID) != r.execID:
		return "execution_id"
	case column(ev.PlanID) != r.planID:
		return "plan_id"
	case column(ev.UserID) != r.userID:
		return "user_id"
	}
	return ""
}
