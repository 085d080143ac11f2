package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/server/rpcerr"
)

const (
	defaultPageSize = 100
	maxPageSize     = 1000
	tokenVersion    = 1
	// tokenLen is version, offset, sequence and filter digest.
	tokenLen = 1 + 8 + 8 + filterDigestLen
	// filterDigestLen bytes of SHA-256 tie a token to its filters.
	filterDigestLen = 16
	// ctxCheckLines is how often a long scan looks for cancellation.
	ctxCheckLines = 1024
)

// List returns a page of events in sequence order, read from the file: the
// log keeps no events in memory. Filters are AND-combined. The page token is
// the byte offset and sequence of the next record plus a digest of the
// filters; it stays valid across restarts, and a token that does not point
// at the start of that record, or was issued for other filters, is refused.
// Only durable records are listed. Errors are status errors.
func (l *Log) List(ctx context.Context, req *stage4v1.ListAuditEventsRequest) (*stage4v1.ListAuditEventsResponse, error) {
	pageSize := int(req.GetPageSize())
	if pageSize < 0 || pageSize > maxPageSize {
		return nil, rpcerr.New(codes.InvalidArgument, rpcerr.InvalidListRequest, "page_size must be between 0 and 1000", nil)
	}
	if pageSize == 0 {
		pageSize = defaultPageSize
	}
	if _, ok := stage4v1.AuditEventType_name[int32(req.GetType())]; !ok {
		return nil, rpcerr.New(codes.InvalidArgument, rpcerr.InvalidListRequest, "type is not a defined AuditEventType", nil)
	}
	f := newFilter(req)
	end := l.size.Load()
	pos, seq := int64(0), uint64(1)
	fromToken := req.GetPageToken() != ""
	if fromToken {
		var ok bool
		if pos, seq, ok = f.decodeToken(req.GetPageToken()); !ok || !l.isLineStart(pos, end) {
			return nil, invalidToken()
		}
	}
	resp := &stage4v1.ListAuditEventsResponse{}
	if f.impossible {
		return resp, nil
	}
	lr := newLineReader(io.NewSectionReader(l.file, pos, end-pos))
	for n := 0; pos < end; n++ {
		if n%ctxCheckLines == 0 && ctx.Err() != nil {
			return nil, rpcerr.New(status.FromContextError(ctx.Err()).Code(), rpcerr.AuditReadFailed, "listing stopped: "+ctx.Err().Error(), nil)
		}
		line, complete, err := lr.next()
		if !complete {
			return nil, readFailed(err)
		}
		check := n == 0 && fromToken
		lineSeq := seq
		pos += int64(len(line))
		seq++
		if !check && !f.mayMatch(line) {
			continue
		}
		ev, _, reason := parseRecord(line[:len(line)-1])
		if check && (reason != "" || ev.GetSequence() != lineSeq) {
			return nil, invalidToken()
		}
		if reason != "" || ev.GetSequence() != lineSeq {
			return nil, rpcerr.New(codes.DataLoss, rpcerr.AuditReadFailed, "the audit log changed under the server", nil)
		}
		if !f.match(ev) {
			continue
		}
		resp.AuditEvents = append(resp.AuditEvents, ev)
		if len(resp.AuditEvents) == pageSize {
			if pos < end {
				resp.NextPageToken = f.encodeToken(pos, seq)
			}
			break
		}
	}
	return resp, nil
}

// isLineStart reports whether a record starts at pos: newlines occur only
// between records, since JSON strings escape them.
func (l *Log) isLineStart(pos, end int64) bool {
	if pos < 0 || pos >= end {
		return false
	}
	if pos == 0 {
		return true
	}
	var b [1]byte
	_, err := l.file.ReadAt(b[:], pos-1)
	return err == nil && b[0] == '\n'
}

func invalidToken() error {
	return rpcerr.New(codes.InvalidArgument, rpcerr.InvalidPageToken,
		"page_token was not issued by this log for these filters", nil)
}

func readFailed(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, errLineTooLong) {
		return rpcerr.New(codes.DataLoss, rpcerr.AuditReadFailed, "the audit log changed under the server", nil)
	}
	return rpcerr.New(codes.Unavailable, rpcerr.AuditReadFailed, "the audit log cannot be read", nil)
}

// filter is a ListAuditEventsRequest's selection. Its needles are the exact
// bytes a matching line contains, which rule out most lines before the
// costlier parse.
type filter struct {
	req        *stage4v1.ListAuditEventsRequest
	needles    [][]byte
	digest     [filterDigestLen]byte
	impossible bool // a filter value no record can hold
}

func newFilter(req *stage4v1.ListAuditEventsRequest) *filter {
	f := &filter{req: req}
	for _, m := range []struct{ name, value string }{
		{"execution_id", req.GetExecutionId()},
		{"plan_id", req.GetPlanId()},
		{"user_id", req.GetUserId()},
	} {
		if m.value == "" {
			continue
		}
		e := encoder{b: []byte(`"` + m.name + `":`)}
		e.str(m.value)
		f.impossible = f.impossible || e.err != nil
		f.needles = append(f.needles, e.b)
	}
	if t := req.GetType(); t != stage4v1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED {
		f.needles = append(f.needles, []byte(`"type":"`+t.String()+`"`))
	}
	var in []byte
	for _, s := range []string{req.GetExecutionId(), req.GetPlanId(), req.GetUserId()} {
		in = binary.AppendUvarint(in, uint64(len(s)))
		in = append(in, s...)
	}
	in = binary.AppendUvarint(in, uint64(req.GetType()))
	sum := sha256.Sum256(in)
	copy(f.digest[:], sum[:])
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

func (f *filter) match(ev *stage4v1.AuditEvent) bool {
	r := f.req
	return (r.GetExecutionId() == "" || r.GetExecutionId() == ev.GetExecutionId()) &&
		(r.GetPlanId() == "" || r.GetPlanId() == ev.GetPlanId()) &&
		(r.GetUserId() == "" || r.GetUserId() == ev.GetUserId()) &&
		(r.GetType() == stage4v1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED || r.GetType() == ev.GetType())
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
