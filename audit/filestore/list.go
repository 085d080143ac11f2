package filestore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

const (
	tokenVersion = 1
	// tokenLen is version, offset, sequence and filter digest.
	tokenLen = 1 + 8 + 8 + audit.FilterDigestLen
	// ctxCheckLines is how often a long scan looks for cancellation.
	ctxCheckLines = 1024
)

// List returns a page of records read from the file: the store keeps no
// events in memory. The page token is the byte offset and sequence of the
// next record plus the filters' digest; it stays valid across restarts,
// and a token that does not point at the start of that record, or was
// issued for other filters, is refused. Only durable records are listed.
func (s *Store) List(ctx context.Context, q audit.Query) (audit.Page, error) {
	f := newFilter(&q)
	end := s.size.Load()
	pos, seq := int64(0), uint64(1)
	fromToken := q.PageToken != ""
	if fromToken {
		var ok bool
		if pos, seq, ok = f.decodeToken(q.PageToken); !ok || !s.isLineStart(pos, end) {
			return audit.Page{}, audit.ErrInvalidPageToken
		}
	}
	var page audit.Page
	if f.impossible {
		return page, nil
	}
	lr := audit.NewLineReader(io.NewSectionReader(s.file, pos, end-pos))
	for n := 0; pos < end; n++ {
		if n%ctxCheckLines == 0 && ctx.Err() != nil {
			return audit.Page{}, fmt.Errorf("list audit log: %w", ctx.Err())
		}
		line, complete, err := lr.Next()
		if !complete {
			return audit.Page{}, readFailed(err)
		}
		check := n == 0 && fromToken
		lineSeq := seq
		pos += int64(len(line))
		seq++
		if !check && !f.mayMatch(line) {
			continue
		}
		ev, _, err := audit.ParseRecord(line[:len(line)-1])
		if check && (err != nil || ev.GetSequence() != lineSeq) {
			return audit.Page{}, audit.ErrInvalidPageToken
		}
		if err != nil || ev.GetSequence() != lineSeq {
			return audit.Page{}, audit.ErrDataLoss
		}
		if !q.Matches(ev) {
			continue
		}
		page.Events = append(page.Events, ev)
		if len(page.Events) == q.PageSize {
			if pos < end {
				page.NextPageToken = f.encodeToken(pos, seq)
			}
			break
		}
	}
	return page, nil
}

// isLineStart reports whether a record starts at pos: newlines occur only
// between records, since JSON strings escape them.
func (s *Store) isLineStart(pos, end int64) bool {
	if pos < 0 || pos >= end {
		return false
	}
	if pos == 0 {
		return true
	}
	var b [1]byte
	_, err := s.file.ReadAt(b[:], pos-1)
	return err == nil && b[0] == '\n'
}

func readFailed(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, audit.ErrLineTooLong) {
		return audit.ErrDataLoss
	}
	return fmt.Errorf("%w: read the audit log: %w", audit.ErrUnavailable, err)
}

// filter is a ListAuditEventsRequest's selection. Its needles are the exact
// bytes a matching line contains, which rule out most lines before the
// costlier parse.
type filter struct {
	needles    [][]byte
	digest     [audit.FilterDigestLen]byte
	impossible bool // a filter value no record can hold
}

func newFilter(q *audit.Query) *filter {
	f := &filter{digest: q.FilterDigest()}
	for _, m := range []struct{ name, value string }{
		{"execution_id", q.ExecutionID},
		{"plan_id", q.PlanID},
		{"user_id", q.UserID},
	} {
		if m.value == "" {
			continue
		}
		member, ok := audit.EncodeMember(m.name, m.value)
		f.impossible = f.impossible || !ok
		f.needles = append(f.needles, member)
	}
	if t := q.Type; t != stage4v1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED {
		f.needles = append(f.needles, []byte(`"type":"`+t.String()+`"`))
	}
	return f
}

func (f *filter) mayMatch(line []byte) bool {
	for _, n := range f.needles {
		if !bytes.Contains(line, n) {
			return false
		}
	}
	return true
}

func (f *filter) encodeToken(pos int64, seq uint64) string {
	b := make([]byte, 0, tokenLen)
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(pos))
	b = binary.BigEndian.AppendUint64(b, seq)
	b = append(b, f.digest[:]...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (f *filter) decodeToken(tok string) (pos int64, seq uint64, ok bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != tokenLen || b[0] != tokenVersion || !bytes.Equal(b[17:], f.digest[:]) {
		return 0, 0, false
	}
	return int64(binary.BigEndian.Uint64(b[1:9])), binary.BigEndian.Uint64(b[9:17]), true
}
