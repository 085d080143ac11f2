package segstore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"slices"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore/internal/segindex"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// List returns a page of records read from the segments: the store keeps
// no events in memory. A filtered listing finds its records through the
// index (one lookup per index run, O(log n) for n segments, plus the
// active segment's index in memory) and reads only them; an unfiltered one
// reads the segments in order. Records of archived segments (files no
// longer in the directory) are not listed. The page token holds the next
// record's sequence and byte offset in its segment, the filters' digest
// and a MAC under the store's key, so a token of another log or for other
// filters is refused; it stays valid across restarts.
func (s *Store) List(ctx context.Context, q audit.Query) (audit.Page, error) {
	if s.isClosed() {
		return audit.Page{}, audit.ErrClosed
	}
	v := s.view.Load()
	digest := q.FilterDigest()
	from, offset := uint64(1), int64(0)
	if q.PageToken != "" {
		var ok bool
		if from, offset, ok = s.decodeToken(q.PageToken, digest); !ok || from > v.head.Sequence {
			return audit.Page{}, audit.ErrInvalidPageToken
		}
	}
	r := &reader{s: s, v: v, files: map[uint64]*os.File{}}
	defer r.close()
	f := newFilter(&q)
	if f.impossible {
		return audit.Page{}, nil
	}
	if len(f.keys) == 0 {
		return r.scan(ctx, &q, f, from, offset, q.PageToken != "")
	}
	return r.lookup(ctx, &q, f, from)
}

// reader reads records of one view of the log for one List call, with
// the segment files it opened.
type reader struct {
	s     *Store
	v     *view
	files map[uint64]*os.File // by first sequence; nil: archived
}

func (r *reader) close() {
	for _, f := range r.files {
		if f != nil {
			f.Close()
		}
	}
}

// segmentOf returns the first sequence and the length of the records of
// the segment that holds seq.
func (r *reader) segmentOf(seq uint64) (first uint64, size int64) {
	if seq >= r.v.activeFirst {
		return r.v.activeFirst, r.v.activeSize
	}
	i, found := slices.BinarySearchFunc(r.v.sealed, seq, func(sl seal, seq uint64) int { return cmp.Compare(sl.Last, seq) })
	_ = found
	sl := &r.v.sealed[i]
	return sl.First, sl.Bytes
}

// file returns the segment file that starts at first, or nil if it is
// not in the directory (archived).
func (r *reader) file(first uint64) (*os.File, error) {
	if f, ok := r.files[first]; ok {
		return f, nil
	}
	f, err := os.Open(r.s.path(SegmentName(first)))
	if errors.Is(err, fs.ErrNotExist) {
		if first == r.v.activeFirst {
			return nil, fmt.Errorf("%w: the active segment %s is gone", audit.ErrDataLoss, SegmentName(first))
		}
		f, err = nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read the audit log: %w", audit.ErrUnavailable, err)
	}
	r.files[first] = f
	return f, nil
}

// record reads and checks the record of sequence seq at offset in its
// segment; nil if its segment is archived.
func (r *reader) record(seq uint64, offset int64) (*stage4v1.AuditEvent, error) {
	first, size := r.segmentOf(seq)
	f, err := r.file(first)
	if f == nil || err != nil {
		return nil, err
	}
	if offset < 0 || offset >= size {
		return nil, audit.ErrDataLoss
	}
	lr := audit.NewLineReader(io.NewSectionReader(f, offset, size-offset))
	line, complete, err := lr.Next()
	if !complete {
		return nil, readFailed(err)
	}
	ev, _, err := audit.ParseRecord(line[:len(line)-1])
	if err != nil || ev.GetSequence() != seq {
		return nil, audit.ErrDataLoss
	}
	return ev, nil
}

// lookup lists the records that match q from sequence from on through the
// index.
func (r *reader) lookup(ctx context.Context, q *audit.Query, f *filter, from uint64) (audit.Page, error) {
	var page audit.Page
	for attempt := 0; ; attempt++ {
		srcs := r.s.index.sources(from)
		if r.v.activeMem != nil {
			srcs = append(srcs, source{first: r.v.activeFirst, last: r.v.head.Sequence, mem: r.v.activeMem})
		}
		err := r.lookupIn(ctx, srcs, q, f, &from, &page)
		if errors.Is(err, errRetired) && attempt < 3 {
			continue
		}
		return page, err
	}
}

// lookupIn fills page from srcs, moving from past what it looked at.
func (r *reader) lookupIn(ctx context.Context, srcs []source, q *audit.Query, f *filter, from *uint64, page *audit.Page) error {
	for _, src := range srcs {
		if src.last < *from {
			continue
		}
		if src.scan {
			if err := r.scanSegment(ctx, src, q, f, from, page); err != nil || len(page.Events) == q.PageSize {
				return err
			}
			continue
		}
		done, err := r.lookupSource(ctx, src, q, f, from, page)
		if err != nil || done {
			return err
		}
		*from = max(*from, src.last+1)
	}
	return nil
}

// lookupChunk is how many index entries of each key a lookup reads at a
// time.
const lookupChunk = 512

// lookupSource fills page from one indexed source: it reads the entries
// of every key of the filter in chunks from *from on and reads only the
// records whose sequence all of them hold, so that combined filters
// (a user's failed executions) cost index entries, not records. done is
// set when the page is full or the durable records end.
func (r *reader) lookupSource(ctx context.Context, src source, q *audit.Query, f *filter, from *uint64, page *audit.Page) (done bool, err error) {
	for {
		if err := ctx.Err(); err != nil {
			return false, fmt.Errorf("list audit log: %w", err)
		}
		// hi bounds what every key's chunk covers: past it, a key whose
		// chunk was full may hold entries not read yet.
		hi := uint64(math.MaxUint64)
		chunks := make([][]segindex.Entry, len(f.keys))
		for i, k := range f.keys {
			c, err := r.s.index.lookup(src, k, *from, lookupChunk)
			if err != nil {
				return false, err
			}
			if len(c) == 0 {
				return false, nil // no match left in this source
			}
			if len(c) == lookupChunk {
				hi = min(hi, c[len(c)-1].Seq)
			}
			chunks[i] = c
		}
		for _, h := range intersect(chunks, hi) {
			if h.Seq > r.v.head.Sequence {
				return true, nil // not durable yet
			}
			ev, err := r.record(h.Seq, int64(h.Offset))
			if err != nil {
				return false, err
			}
			*from = h.Seq + 1
			if ev == nil || !q.Matches(ev) {
				continue
			}
			page.Events = append(page.Events, ev)
			if len(page.Events) == q.PageSize {
				if *from <= r.v.head.Sequence {
					page.NextPageToken = r.s.encodeToken(*from, 0, q.FilterDigest())
				}
				return true, nil
			}
		}
		if hi == math.MaxUint64 {
			return false, nil // every key's entries in this source were read
		}
		*from = hi + 1
	}
}

// intersect returns the entries of chunks[0] up to sequence hi whose
// sequence every other chunk holds too (each chunk is in ascending
// sequence order).
func intersect(chunks [][]segindex.Entry, hi uint64) []segindex.Entry {
	var out []segindex.Entry
	pos := make([]int, len(chunks))
next:
	for _, e := range chunks[0] {
		if e.Seq > hi {
			break
		}
		for i := 1; i < len(chunks); i++ {
			c := chunks[i]
			for pos[i] < len(c) && c[pos[i]].Seq < e.Seq {
				pos[i]++
			}
			if pos[i] == len(c) || c[pos[i]].Seq != e.Seq {
				continue next
			}
		}
		out = append(out, e)
	}
	return out
}

// scanSegment lists the matching records of a sealed segment that has no
// index run yet by reading it.
func (r *reader) scanSegment(ctx context.Context, src source, q *audit.Query, f *filter, from *uint64, page *audit.Page) error {
	file, err := r.file(src.first)
	if file == nil || err != nil {
		*from = src.last + 1
		return err
	}
	_, size := r.segmentOf(src.first)
	lr := audit.NewLineReader(io.NewSectionReader(file, 0, size))
	for seq, n := src.first, 0; seq <= src.last; seq, n = seq+1, n+1 {
		if n%ctxCheckLines == 0 && ctx.Err() != nil {
			return fmt.Errorf("list audit log: %w", ctx.Err())
		}
		line, complete, err := lr.Next()
		if !complete {
			return readFailed(err)
		}
		if seq < *from || !f.mayMatch(line) {
			continue
		}
		ev, _, err := audit.ParseRecord(line[:len(line)-1])
		if err != nil || ev.GetSequence() != seq {
			return audit.ErrDataLoss
		}
		*from = seq + 1
		if !q.Matches(ev) {
			continue
		}
		page.Events = append(page.Events, ev)
		if len(page.Events) == q.PageSize {
			if *from <= r.v.head.Sequence {
				page.NextPageToken = r.s.encodeToken(*from, 0, q.FilterDigest())
			}
			return nil
		}
	}
	*from = src.last + 1
	return nil
}

// scan lists every record from sequence from, at offset in its segment,
// on, reading the segments in order.
func (r *reader) scan(ctx context.Context, q *audit.Query, f *filter, from uint64, offset int64, fromToken bool) (audit.Page, error) {
	var page audit.Page
	seq := from
	for seq <= r.v.head.Sequence {
		first, size := r.segmentOf(seq)
		file, err := r.file(first)
		if err != nil {
			return audit.Page{}, err
		}
		last := r.v.head.Sequence
		if first != r.v.activeFirst {
			i, _ := slices.BinarySearchFunc(r.v.sealed, first, func(sl seal, first uint64) int { return cmp.Compare(sl.First, first) })
			last = r.v.sealed[i].Last
		}
		if file == nil { // archived: on to the next segment
			seq, offset, fromToken = last+1, 0, false
			continue
		}
		if seq == first {
			offset = 0
		}
		if offset < 0 || offset >= size {
			return audit.Page{}, audit.ErrInvalidPageToken
		}
		lr := audit.NewLineReader(io.NewSectionReader(file, offset, size-offset))
		for n := 0; seq <= last; n++ {
			if n%ctxCheckLines == 0 && ctx.Err() != nil {
				return audit.Page{}, fmt.Errorf("list audit log: %w", ctx.Err())
			}
			line, complete, err := lr.Next()
			if !complete {
				if fromToken {
					return audit.Page{}, audit.ErrInvalidPageToken
				}
				return audit.Page{}, readFailed(err)
			}
			ev, _, err := audit.ParseRecord(line[:len(line)-1])
			if err != nil || ev.GetSequence() != seq {
				if fromToken {
					return audit.Page{}, audit.ErrInvalidPageToken
				}
				return audit.Page{}, audit.ErrDataLoss
			}
			fromToken = false
			offset += int64(len(line))
			seq++
			if !q.Matches(ev) {
				continue
			}
			page.Events = append(page.Events, ev)
			if len(page.Events) == q.PageSize {
				if seq <= r.v.head.Sequence {
					if seq > last {
						offset = 0 // the next record starts the next segment
					}
					page.NextPageToken = r.s.encodeToken(seq, offset, q.FilterDigest())
				}
				return page, nil
			}
		}
		offset = 0
	}
	return page, nil
}

// ctxCheckLines is how often a long scan looks for cancellation.
const ctxCheckLines = 1024

func readFailed(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, audit.ErrLineTooLong) {
		return audit.ErrDataLoss
	}
	return fmt.Errorf("%w: read the audit log: %w", audit.ErrUnavailable, err)
}

// filter is a query's selection: the index keys of its members (none for
// an unfiltered listing), and the exact bytes a matching line contains,
// which rule out most lines before the costlier parse.
type filter struct {
	keys       []uint64 // index keys of the filters
	needles    [][]byte
	impossible bool // a filter value no record can hold
}

func newFilter(q *audit.Query) *filter {
	f := &filter{}
	for _, m := range []struct {
		name  string
		field segindex.Field
		value string
	}{
		{"execution_id", segindex.ExecutionID, q.ExecutionID},
		{"plan_id", segindex.PlanID, q.PlanID},
		{"user_id", segindex.UserID, q.UserID},
	} {
		if m.value == "" {
			continue
		}
		member, ok := audit.EncodeMember(m.name, m.value)
		f.impossible = f.impossible || !ok
		f.needles = append(f.needles, member)
		f.keys = append(f.keys, segindex.Key(m.field, m.value))
	}
	if t := q.Type; t != stage4v1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED {
		f.needles = append(f.needles, []byte(`"type":"`+t.String()+`"`))
		f.keys = append(f.keys, typeKeys[t])
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

const (
	tokenVersion = 2
	tokenMACLen  = 12
	// tokenLen is version, sequence, offset, filter digest and MAC.
	tokenLen = 1 + 8 + 8 + audit.FilterDigestLen + tokenMACLen
)

// encodeToken makes the page token that continues at record seq, which
// starts at offset in its segment (0 when only the sequence counts).
func (s *Store) encodeToken(seq uint64, offset int64, digest [audit.FilterDigestLen]byte) string {
	b := make([]byte, 0, tokenLen)
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, uint64(offset))
	b = append(b, digest[:]...)
	b = append(b, s.tokenMAC(b)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *Store) decodeToken(tok string, digest [audit.FilterDigestLen]byte) (seq uint64, offset int64, ok bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != tokenLen || b[0] != tokenVersion {
		return 0, 0, false
	}
	body, mac := b[:tokenLen-tokenMACLen], b[tokenLen-tokenMACLen:]
	if !hmac.Equal(mac, s.tokenMAC(body)) || !bytes.Equal(body[17:], digest[:]) {
		return 0, 0, false
	}
	seq = binary.BigEndian.Uint64(body[1:9])
	offset = int64(binary.BigEndian.Uint64(body[9:17]))
	return seq, offset, seq > 0 && offset >= 0
}

// tokenMAC binds a token to this log: a token of another log, or one
// made up, is refused rather than read as a position.
func (s *Store) tokenMAC(body []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("stage4 page token\x00"))
	m.Write(body)
	return m.Sum(nil)[:tokenMACLen]
}
