package segstore

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sync"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore/internal/segindex"
)

// memIndex is the index of the active segment, kept in memory: Append
// adds a record's entries (tens of nanoseconds each), List reads them
// concurrently. At the seal it becomes the segment's index run.
type memIndex struct{ m segindex.Mem }

func newMemIndex() *memIndex { return &memIndex{} }

// typeKeys are the index keys of the event types, computed once.
var typeKeys = func() map[audit.EventType]uint64 {
	keys := map[audit.EventType]uint64{}
	for t := audit.TypeUnspecified; t.Defined(); t++ {
		keys[t] = segindex.Key(segindex.Type, t.String())
	}
	return keys
}()

func (m *memIndex) add(r *audit.Record, offset int64) {
	m.addFields(r.Sequence, offset, r.Type, r.ExecutionID, r.PlanID, r.UserID)
}

func (m *memIndex) addFields(seq uint64, offset int64, t audit.EventType, executionID, planID, userID string) {
	// On the stack: this runs for every record appended.
	var buf [4]segindex.Entry
	// Sequences only grow, which is all Add can refuse.
	_ = m.m.Add(appendEntries(buf[:0], seq, offset, t, executionID, planID, userID)...)
}

// appendEntries appends the index entries of one record to dst.
func appendEntries(dst []segindex.Entry, seq uint64, offset int64, t audit.EventType, executionID, planID, userID string) []segindex.Entry {
	off := uint32(offset)
	for _, f := range [...]struct {
		field segindex.Field
		value string
	}{{segindex.ExecutionID, executionID}, {segindex.PlanID, planID}, {segindex.UserID, userID}} {
		if f.value != "" {
			dst = append(dst, segindex.Entry{Key: segindex.Key(f.field, f.value), Seq: seq, Offset: off})
		}
	}
	return append(dst, segindex.Entry{Key: typeKeys[t], Seq: seq, Offset: off})
}

// indexer keeps the index runs of the sealed segments (in IndexDir): it
// writes a sealed segment's run from its memIndex, rebuilds the runs of
// segments that have none by reading them, and merges runs so that a
// lookup reads O(log n) runs for n segments (segindex.PlanMerge). It
// works in one background goroutine; until a segment's run is written,
// lookups use its memIndex or, for a run being rebuilt, scan it.
type indexer struct {
	s   *Store
	dir string

	mu      sync.RWMutex
	runs    []*liveRun // sorted by First, not overlapping
	pending []pending  // sealed segments without a run yet, by First
	closed  bool

	wake chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
	// err is the last background error (guarded by mu): the work is
	// tried again at the next seal, and lookups meanwhile read the
	// segments concerned.
	err error
}

// setErr records a background error.
func (ix *indexer) setErr(err error) {
	ix.mu.Lock()
	ix.err = err
	ix.mu.Unlock()
}

// liveRun is an open run; retired once merged away, after which lookups
// must take the sources again.
type liveRun struct {
	*segindex.Run
	retired bool
}

// pending is a sealed segment without a run: with its memIndex (sealed in
// this process) or without (to rebuild by reading the segment).
type pending struct {
	seal seal
	mem  *memIndex
}

func startIndexer(s *Store, seals []seal, names map[uint64]string) (*indexer, error) {
	ix := &indexer{s: s, dir: s.path(IndexDir), wake: make(chan struct{}, 1), done: make(chan struct{})}
	if err := os.MkdirAll(ix.dir, 0o700); err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	live, stale, err := segindex.ListRuns(ix.dir)
	if err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	for _, r := range stale {
		os.Remove(r.Path)
	}
	// A run is kept only if it covers whole sealed segments.
	bounds := map[uint64]bool{}
	ends := map[uint64]bool{}
	for _, sl := range seals {
		bounds[sl.First], ends[sl.Last] = true, true
	}
	covered := map[uint64]bool{}
	for _, info := range live {
		if !bounds[info.First] || !ends[info.Last] {
			os.Remove(info.Path)
			continue
		}
		r, err := segindex.OpenRun(info.Path)
		if err != nil {
			os.Remove(info.Path)
			continue
		}
		ix.runs = append(ix.runs, &liveRun{Run: r})
		for _, sl := range seals {
			if sl.First >= info.First && sl.Last <= info.Last {
				covered[sl.First] = true
			}
		}
	}
	for _, sl := range seals {
		if _, present := names[sl.First]; present && !covered[sl.First] {
			ix.pending = append(ix.pending, pending{seal: sl})
		}
	}
	s.recovery.IndexRebuilds = len(ix.pending)
	ix.wg.Add(1)
	go ix.loop()
	ix.kick()
	return ix, nil
}

func (ix *indexer) kick() {
	select {
	case ix.wake <- struct{}{}:
	default:
	}
}

// sealed hands the index of a segment just sealed to the indexer.
func (ix *indexer) sealed(sl seal, mem *memIndex) {
	ix.mu.Lock()
	ix.pending = append(ix.pending, pending{seal: sl, mem: mem})
	ix.mu.Unlock()
	ix.kick()
}

func (ix *indexer) close() {
	ix.mu.Lock()
	ix.closed = true
	ix.mu.Unlock()
	close(ix.done)
	ix.wg.Wait()
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, r := range ix.runs {
		r.Close()
	}
	ix.runs = nil
}

func (ix *indexer) loop() {
	defer ix.wg.Done()
	for {
		select {
		case <-ix.done:
			ix.drain()
			return
		case <-ix.wake:
		}
		for ix.step() {
			select {
			case <-ix.done:
				ix.drain()
				return
			default:
			}
		}
	}
}

// drain writes, at Close, the runs of the segments sealed in this process
// (a fraction of a second each), so that the next start need not rebuild
// them by reading the segments. Rebuilds and merges wait for the next
// start.
func (ix *indexer) drain() {
	for {
		ix.mu.RLock()
		var p *pending
		if len(ix.pending) > 0 && ix.pending[0].mem != nil {
			p = &ix.pending[0]
		}
		ix.mu.RUnlock()
		if p == nil || ix.writePending(*p) != nil {
			return
		}
	}
}

// step does one piece of work (writes one pending run, or one merge) and
// reports whether there may be more.
func (ix *indexer) step() bool {
	ix.mu.RLock()
	var p *pending
	if len(ix.pending) > 0 {
		p = &ix.pending[0]
	}
	infos := make([]segindex.RunInfo, len(ix.runs))
	for i, r := range ix.runs {
		infos[i] = segindex.RunInfo{Path: r.Path(), First: r.First(), Last: r.Last(), Count: r.Count()}
	}
	ix.mu.RUnlock()
	if p != nil {
		if err := ix.writePending(*p); err != nil {
			ix.setErr(err)
			return false // again at the next seal
		}
		return true
	}
	merge := segindex.PlanMerge(infos)
	if len(merge) < 2 {
		return false
	}
	if err := ix.merge(merge); err != nil {
		ix.setErr(err)
		return false
	}
	return true
}

// writePending writes the run of the first pending segment.
func (ix *indexer) writePending(p pending) error {
	var list []segindex.Entry
	if p.mem != nil {
		list = p.mem.m.Entries()
	} else {
		var err error
		if list, err = ix.readEntries(p.seal); err != nil {
			return err
		}
	}
	path, err := segindex.WriteRun(ix.dir, p.seal.First, p.seal.Last, list)
	if err != nil {
		return err
	}
	r, err := segindex.OpenRun(path)
	if err != nil {
		return err
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	// Cleared first: the backing array would keep the memIndex alive.
	ix.pending[0] = pending{}
	ix.pending = ix.pending[1:]
	i, _ := slices.BinarySearchFunc(ix.runs, r.First(), func(lr *liveRun, first uint64) int {
		return cmp.Compare(lr.First(), first)
	})
	ix.runs = slices.Insert(ix.runs, i, &liveRun{Run: r})
	return nil
}

// readEntries reads the index entries of a sealed segment from its file.
func (ix *indexer) readEntries(sl seal) ([]segindex.Entry, error) {
	f, err := os.Open(ix.s.path(SegmentName(sl.First)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var list []segindex.Entry
	lr := audit.NewLineReader(io.NewSectionReader(f, 0, sl.Bytes))
	for pos := int64(0); pos < sl.Bytes; {
		line, complete, err := lr.Next()
		if !complete {
			return nil, fmt.Errorf("read %s: %w", SegmentName(sl.First), err)
		}
		ev, _, err := audit.ParseRecord(line[:len(line)-1])
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", SegmentName(sl.First), err)
		}
		list = appendEntries(list, ev.Sequence, pos, ev.Type, ev.ExecutionID, ev.PlanID, ev.UserID)
		pos += int64(len(line))
	}
	return list, nil
}

// merge merges the runs at infos (consecutive live runs) into one.
func (ix *indexer) merge(infos []segindex.RunInfo) error {
	ix.mu.RLock()
	var in []*segindex.Run
	for _, r := range ix.runs {
		for _, info := range infos {
			if r.Path() == info.Path {
				in = append(in, r.Run)
			}
		}
	}
	ix.mu.RUnlock()
	// Only this goroutine retires runs, so in stays open meanwhile.
	path, err := segindex.MergeRuns(ix.dir, in)
	if err != nil {
		return err
	}
	merged, err := segindex.OpenRun(path)
	if err != nil {
		return err
	}
	ix.mu.Lock()
	var kept []*liveRun
	var gone []*liveRun
	for _, r := range ix.runs {
		if r.First() >= merged.First() && r.Last() <= merged.Last() {
			r.retired = true
			gone = append(gone, r)
			continue
		}
		kept = append(kept, r)
	}
	i, _ := slices.BinarySearchFunc(kept, merged.First(), func(lr *liveRun, first uint64) int {
		return cmp.Compare(lr.First(), first)
	})
	ix.runs = slices.Insert(kept, i, &liveRun{Run: merged})
	ix.mu.Unlock()
	for _, r := range gone {
		r.Close()
		if err := os.Remove(r.Path()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// source is where lookups find the records of a range of sequences.
type source struct {
	first, last uint64
	run         *liveRun  // an index run
	mem         *memIndex // or a memIndex
	scan        bool      // or neither: the segment is read
}

// sources returns the sources of the sealed segments from sequence from
// on, in order.
func (ix *indexer) sources(from uint64) []source {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	var out []source
	for _, r := range ix.runs {
		if r.Last() >= from {
			out = append(out, source{first: r.First(), last: r.Last(), run: r})
		}
	}
	for _, p := range ix.pending {
		if p.seal.Last >= from {
			out = append(out, source{first: p.seal.First, last: p.seal.Last, mem: p.mem, scan: p.mem == nil})
		}
	}
	slices.SortFunc(out, func(a, b source) int { return cmp.Compare(a.first, b.first) })
	return out
}

// errRetired: a run was merged away during a lookup; take the sources
// again.
var errRetired = errors.New("index run retired")

// lookup returns up to limit entries of key from sequence from on in
// src, which must not be a scan source.
func (ix *indexer) lookup(src source, key, from uint64, limit int) ([]segindex.Entry, error) {
	if src.mem != nil {
		return src.mem.m.Lookup(key, from, limit), nil
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if src.run.retired {
		return nil, errRetired
	}
	return src.run.Lookup(key, from, limit)
}

// IndexBacklog returns the number of sealed segments whose index run is
// not written yet (being written after a seal, or rebuilt after a start):
// lookups in them read their memIndex or the segment itself meanwhile.
func (s *Store) IndexBacklog() int {
	s.index.mu.RLock()
	defer s.index.mu.RUnlock()
	return len(s.index.pending)
}
