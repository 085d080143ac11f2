package segstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"slices"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore/internal/segindex"
)

// List returns a page of records read from the segments: the store keeps
// no events in memory. A filtered listing finds its records through the
// index (one lookup per index run, O(log n) for n segments, plus the
// active segment's index in memory) and reads only them; an unfiltered one
// reads the segments in order. Only durable records are listed (the view
// that the last durable batch published). Records of archived segments
// (files no longer in the directory) are not listed. The cursor of the
// next page holds the next record's sequence and, for an unfiltered
// listing, its byte offset in its segment, which List checks against the
// record it finds there.
func (s *Store) List(ctx context.Context, q audit.Query) (audit.Page, error) {
	if s.isClosed() {
		return audit.Page{}, audit.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return audit.Page{}, fmt.Errorf("list audit log: %w", err)
	}
	// On a goroutine of its own: a disk that stops answering cannot hold
	// the caller past its deadline (the listing also looks at ctx between
	// records, which bounds a long one on a disk that answers).
	return read(ctx, func() (audit.Page, error) { return s.list(ctx, q) })
}

func (s *Store) list(ctx context.Context, q audit.Query) (audit.Page, error) {
	v := s.view.Load()
	from, offset := max(q.From.Sequence, 1), q.From.Offset
	if from > v.head.Sequence {
		return audit.Page{}, nil
	}
	r := &reader{s: s, v: v, files: map[uint64]*os.File{}, budget: q.MaxScanned}
	defer r.close()
	f := newFilter(&q.Filter)
	if f.impossible {
		return audit.Page{}, nil
	}
	if len(f.keys) == 0 {
		return r.scan(ctx, &q, f, from, offset)
	}
	return r.lookup(ctx, &q, f, from)
}

// reader reads records of one view of the log for one List call, with
// the segment files it opened.
type reader struct {
	s     *Store
	v     *view
	files map[uint64]*os.File // by first sequence; nil: archived
	// budget is what is left of the query's MaxScanned (records read, and
	// index entries at entriesPerScan each); unbounded when the query
	// set none.
	budget int
	spent  int
	// lines reads the records that an index points at, one at a time,
	// with one small buffer for the whole call.
	lines *audit.LineReader
}

// recordReadBytes is how much of a segment a lookup reads for one
// record: most records fit, and a longer one is read on.
const recordReadBytes = 2 << 10

// entriesPerScan is how many index entries count as one record read
// against a query's MaxScanned: an entry is 20 bytes read from a run, a
// record a parse.
const entriesPerScan = 64

// spend counts n units of work and reports whether the budget allows
// going on.
func (r *reader) spend(n int) bool {
	r.spent += n
	return r.budget <= 0 || r.spent < r.budget
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
	i, _ := slices.BinarySearchFunc(r.v.sealed, seq, func(sl seal, seq uint64) int { return cmp.Compare(sl.Last, seq) })
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
// segment; ok is false if its segment is archived.
func (r *reader) record(seq uint64, offset int64) (ev audit.Event, ok bool, err error) {
	first, size := r.segmentOf(seq)
	f, err := r.file(first)
	if f == nil || err != nil {
		return audit.Event{}, false, err
	}
	if offset < 0 || offset >= size {
		return audit.Event{}, false, fmt.Errorf("%w: record %d is not at offset %d of %s", audit.ErrDataLoss, seq, offset, SegmentName(first))
	}
	sr := io.NewSectionReader(f, offset, size-offset)
	if r.lines == nil {
		r.lines = audit.NewLineReaderSize(sr, recordReadBytes)
	} else {
		r.lines.Reset(sr)
	}
	line, complete, err := r.lines.Next()
	if !complete {
		return audit.Event{}, false, readFailed(err)
	}
	ev, _, err = audit.ParseRecord(line[:len(line)-1])
	if err != nil {
		return audit.Event{}, false, fmt.Errorf("record %d: %w", seq, err)
	}
	if ev.Sequence != seq {
		return audit.Event{}, false, fmt.Errorf("%w: the index points record %d at a record of sequence %d", audit.ErrDataLoss, seq, ev.Sequence)
	}
	return ev, true, nil
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
		var done bool
		var err error
		if src.scan {
			done, err = r.scanSegment(ctx, src, q, f, from, page)
		} else {
			done, err = r.lookupSource(ctx, src, q, f, from, page)
		}
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

// pageEnds ends page at from, the next sequence to look at: its Next is
// where the listing continues, unless no durable record is left.
func (r *reader) pageEnds(page *audit.Page, from uint64, offset int64) {
	if from <= r.v.head.Sequence {
		page.Next = audit.Cursor{Sequence: from, Offset: offset}
	}
}

// lookupSource fills page from one indexed source: it reads the entries
// of every key of the filter in chunks from *from on and reads only the
// records whose sequence all of them hold, so that combined filters
// (a user's failed executions) cost index entries, not records. done is
// set when the page is full, the budget is spent or the durable records
// end.
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
			r.spend(len(c) / entriesPerScan)
		}
		for _, h := range intersect(chunks, hi) {
			if h.Seq > r.v.head.Sequence {
				return true, nil // not durable yet
			}
			ev, ok, err := r.record(h.Seq, int64(h.Offset))
			if err != nil {
				return false, err
			}
			*from = h.Seq + 1
			if ok && q.Matches(&ev) {
				page.Events = append(page.Events, ev)
			}
			if len(page.Events) == q.Limit || !r.spend(1) {
				r.pageEnds(page, *from, 0)
				return true, nil
			}
		}
		if hi == math.MaxUint64 {
			return false, nil // every key's entries in this source were read
		}
		*from = hi + 1
		if !r.spend(0) {
			r.pageEnds(page, *from, 0)
			return true, nil
		}
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
func (r *reader) scanSegment(ctx context.Context, src source, q *audit.Query, f *filter, from *uint64, page *audit.Page) (done bool, err error) {
	file, err := r.file(src.first)
	if file == nil || err != nil {
		*from = src.last + 1
		return false, err
	}
	_, size := r.segmentOf(src.first)
	lr := audit.NewLineReader(io.NewSectionReader(file, 0, size))
	for seq, n := src.first, 0; seq <= src.last; seq, n = seq+1, n+1 {
		if n%ctxCheckLines == 0 && ctx.Err() != nil {
			return false, fmt.Errorf("list audit log: %w", ctx.Err())
		}
		line, complete, err := lr.Next()
		if !complete {
			return false, readFailed(err)
		}
		if seq < *from || !f.mayMatch(line) {
			continue
		}
		ev, _, err := audit.ParseRecord(line[:len(line)-1])
		if err != nil {
			return false, fmt.Errorf("record %d: %w", seq, err)
		}
		if ev.Sequence != seq {
			return false, fmt.Errorf("%w: segment %s holds record %d where %d belongs", audit.ErrDataLoss, SegmentName(src.first), ev.Sequence, seq)
		}
		*from = seq + 1
		if q.Matches(&ev) {
			page.Events = append(page.Events, ev)
		}
		if len(page.Events) == q.Limit || !r.spend(1) {
			r.pageEnds(page, *from, 0)
			return true, nil
		}
	}
	*from = src.last + 1
	return false, nil
}

// scan lists every record from sequence from, at offset in its segment
// (0: unknown), on, reading the segments in order.
func (r *reader) scan(ctx context.Context, q *audit.Query, f *filter, from uint64, offset int64) (audit.Page, error) {
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
			seq, offset = last+1, 0
			continue
		}
		if seq == first || offset <= 0 || offset >= size {
			offset = 0
		} else if _, ok, err := r.record(seq, offset); err != nil || !ok {
			// The hint does not lead to the record (a log begun anew
			// since the token was issued): read from the segment's start.
			offset = 0
		}
		lr := audit.NewLineReader(io.NewSectionReader(file, offset, size-offset))
		skipTo := seq
		if offset == 0 {
			seq = first
		}
		for n := 0; seq <= last; n++ {
			if n%ctxCheckLines == 0 && ctx.Err() != nil {
				return audit.Page{}, fmt.Errorf("list audit log: %w", ctx.Err())
			}
			line, complete, err := lr.Next()
			if !complete {
				return audit.Page{}, readFailed(err)
			}
			offset += int64(len(line))
			if seq < skipTo {
				seq++
				continue
			}
			ev, _, err := audit.ParseRecord(line[:len(line)-1])
			if err != nil {
				return audit.Page{}, fmt.Errorf("record %d: %w", seq, err)
			}
			if ev.Sequence != seq {
				return audit.Page{}, fmt.Errorf("%w: segment %s holds record %d where %d belongs", audit.ErrDataLoss, SegmentName(first), ev.Sequence, seq)
			}
			seq++
			if q.Matches(&ev) {
				page.Events = append(page.Events, ev)
			}
			if len(page.Events) == q.Limit || !r.spend(1) {
				if seq > last {
					offset = 0 // the next record starts the next segment
				}
				r.pageEnds(&page, seq, offset)
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
		return fmt.Errorf("%w: a record is cut short", audit.ErrDataLoss)
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

func newFilter(q *audit.Filter) *filter {
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
	if t := q.Type; t != audit.TypeUnspecified {
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
