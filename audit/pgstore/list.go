package pgstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

const (
	tokenVersion = 1
	// tokenLen is version, log id, next sequence and filter digest.
	tokenLen = 1 + logIDLen + 8 + audit.FilterDigestLen
)

// List returns one page of the records matching q, by keyset paging on
// sequence: WHERE <filters> AND sequence >= <next> ORDER BY sequence
// LIMIT page size + 1, served by the (column, sequence) indexes, so that
// the cost of a page does not grow with the log. The page token holds the
// next sequence, the log's id and q's filter digest, base64url-encoded.
// Records are returned as decoded from their stored bytes; a record whose
// hash does not match its bytes, or whose columns disagree with it, fails
// the call with audit.ErrDataLoss.
func (s *Store) List(ctx context.Context, q audit.Query) (audit.Page, error) {
	if s.closed.Load() {
		return audit.Page{}, audit.ErrClosed
	}
	if q.PageSize < 1 {
		return audit.Page{}, fmt.Errorf("list audit records: page size %d", q.PageSize)
	}
	digest := q.FilterDigest()
	next := uint64(1)
	if q.PageToken != "" {
		var ok bool
		if next, ok = s.decodeToken(q.PageToken, digest); !ok {
			return audit.Page{}, audit.ErrInvalidPageToken
		}
	}
	sql, args := listQuery(&q, next)
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return audit.Page{}, fmt.Errorf("list audit records: %w", s.dbError(err))
	}
	defer rows.Close()
	var page audit.Page
	var n int
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.seq, &r.typ, &r.execID, &r.planID, &r.userID, &r.record); err != nil {
			return audit.Page{}, fmt.Errorf("list audit records: %w", s.dbError(err))
		}
		if n == q.PageSize {
			page.NextPageToken = s.encodeToken(uint64(r.seq), digest)
			break
		}
		n++
		ev, err := r.decode()
		if err != nil {
			return audit.Page{}, fmt.Errorf("list audit records: %w", err)
		}
		// The columns may match where the record does not (NUL mapped to
		// U+FFFD); the record decides.
		if q.Matches(ev) {
			page.Events = append(page.Events, ev)
		}
	}
	if err := rows.Err(); err != nil {
		return audit.Page{}, fmt.Errorf("list audit records: %w", s.dbError(err))
	}
	return page, nil
}

func listQuery(q *audit.Query, next uint64) (string, []any) {
	var b strings.Builder
	b.WriteString("SELECT sequence, type, execution_id, plan_id, user_id, record FROM audit_records WHERE sequence >= $1")
	args := []any{int64(next)}
	add := func(col, v string) {
		args = append(args, v)
		b.WriteString(" AND " + col + " = $" + strconv.Itoa(len(args)))
	}
	if q.ExecutionID != "" {
		add("execution_id", column(q.ExecutionID))
	}
	if q.PlanID != "" {
		add("plan_id", column(q.PlanID))
	}
	if q.UserID != "" {
		add("user_id", column(q.UserID))
	}
	if q.Type != stage4v1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED {
		add("type", q.Type.String())
	}
	args = append(args, q.PageSize+1)
	b.WriteString(" ORDER BY sequence LIMIT $" + strconv.Itoa(len(args)))
	return b.String(), args
}

// row is one audit_records row as List reads it.
type row struct {
	seq                         int64
	typ, execID, planID, userID string
	record                      []byte
}

// decode parses the stored record and checks that the row's columns are
// the record's members, which the indexes and filters rely on.
func (r *row) decode() (*stage4v1.AuditEvent, error) {
	ev, _, err := audit.ParseRecord(r.record)
	if err != nil {
		return nil, fmt.Errorf("sequence %d: %w", r.seq, err)
	}
	if col := r.disagreement(ev); col != "" {
		return nil, fmt.Errorf("%w: sequence %d: column %s disagrees with the record", audit.ErrDataLoss, r.seq, col)
	}
	return ev, nil
}

// disagreement names the first column that is not what the record says,
// or returns "".
func (r *row) disagreement(ev *stage4v1.AuditEvent) string {
	switch {
	case ev.GetSequence() != uint64(r.seq):
		return "sequence"
	case ev.GetType().String() != r.typ:
		return "type"
	case column(ev.GetExecutionId()) != r.execID:
		return "execution_id"
	case column(ev.GetPlanId()) != r.planID:
		return "plan_id"
	case column(ev.GetUserId()) != r.userID:
		return "user_id"
	}
	return ""
}

func (s *Store) encodeToken(next uint64, digest [audit.FilterDigestLen]byte) string {
	b := make([]byte, 0, tokenLen)
	b = append(b, tokenVersion)
	b = append(b, s.logID[:]...)
	b = binary.BigEndian.AppendUint64(b, next)
	b = append(b, digest[:]...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *Store) decodeToken(tok string, digest [audit.FilterDigestLen]byte) (uint64, bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != tokenLen || b[0] != tokenVersion {
		return 0, false
	}
	b = b[1:]
	if !bytes.Equal(b[:logIDLen], s.logID[:]) {
		return 0, false // another log's token
	}
	next := binary.BigEndian.Uint64(b[logIDLen:])
	if next == 0 || next > math.MaxInt64 || !bytes.Equal(b[logIDLen+8:], digest[:]) {
		return 0, false
	}
	return next, true
}
