package segindex

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync/atomic"
)

// Mem is the in-memory index of the segment being written. One writer calls
// Add; any number of readers call Lookup and Entries at the same time
// without locks: the writer publishes each entry with an atomic store after
// writing it, and never moves what it has published (a list that grows is
// copied and the copy published). The zero Mem is empty and ready to use.
type Mem struct {
	table atomic.Pointer[memTable]
	// base is the Seq of the first entry added: postings keep Seq - base
	// in 32 bits, which halves them (a segment holds far fewer than 2^32
	// records). Stored before any posting is published.
	base atomic.Uint64

	// The writer's own state.
	keys    int
	lastSeq uint64
	based   bool
}

// memTable is an open-addressing hash table from key to the key's postings,
// indexed by the key's low bits (keys are already uniform hashes). The
// writer fills a slot by storing the key, then the list, so that a reader
// that sees the list sees the key; slots are never emptied.
type memTable struct {
	slots []memSlot
	mask  uint64
}

type memSlot struct {
	key  atomic.Uint64
	list atomic.Pointer[postings]
}

// postings are one key's entries in ascending Seq: n of them are published
// in *pub. The writer appends to w, whose array is *pub's until it grows.
// The first few live in the struct itself, so that a new key, which most
// execution IDs are, costs one allocation.
type postings struct {
	n      atomic.Int64
	pub    atomic.Pointer[[]posting]
	w      []posting
	first  []posting // never changes once published: *pub until w grows
	inline [3]posting
}

func newPostings() *postings {
	p := &postings{}
	p.w = p.inline[:0]
	p.first = p.inline[:]
	p.pub.Store(&p.first)
	return p
}

// posting is an entry of a key: its Seq less the Mem's base, and its
// Offset.
type posting struct {
	delta uint32
	off   uint32
}

// Add adds entries, which must not go back in Seq (from one Add to the next
// either): the entries of a record may come in one call or several. It
// adds all of them or, if one is out of order, none and returns an error.
// Only one goroutine may call Add.
func (m *Mem) Add(entries ...Entry) error {
	last := m.lastSeq
	for _, e := range entries {
		if e.Seq < last {
			return fmt.Errorf("index entry seq %d added after %d", e.Seq, last)
		}
		last = e.Seq
	}
	if len(entries) == 0 {
		return nil
	}
	if !m.based {
		m.base.Store(entries[0].Seq)
		m.based = true
	}
	base := m.base.Load()
	if entries[0].Seq < base || last-base > math.MaxUint32 {
		return fmt.Errorf("index entry seq %d out of the range of this index (from %d)", last, base)
	}
	for _, e := range entries {
		m.postings(e.Key).add(posting{uint32(e.Seq - base), e.Offset})
	}
	m.lastSeq = last
	return nil
}

// postings returns key's postings, adding the key if it is new.
func (m *Mem) postings(key uint64) *postings {
	t := m.table.Load()
	if t == nil {
		t = newMemTable(64)
		m.table.Store(t)
	}
	for i := key & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		if p := s.list.Load(); p != nil {
			if s.key.Load() == key {
				return p
			}
			continue
		}
		// At most half full keeps probe sequences short.
		if 2*(m.keys+1) > len(t.slots) {
			m.grow(t)
			return m.postings(key)
		}
		p := newPostings()
		s.key.Store(key)
		s.list.Store(p)
		m.keys++
		return p
	}
}

// grow publishes a table twice the size of t holding the same postings.
// Readers still probing t find what t had.
func (m *Mem) grow(t *memTable) {
	nt := newMemTable(2 * len(t.slots))
	for i := range t.slots {
		p := t.slots[i].list.Load()
		if p == nil {
			continue
		}
		key := t.slots[i].key.Load()
		j := key & nt.mask
		for nt.slots[j].list.Load() != nil {
			j = (j + 1) & nt.mask
		}
		nt.slots[j].key.Store(key)
		nt.slots[j].list.Store(p)
	}
	m.table.Store(nt)
}

func newMemTable(size int) *memTable {
	return &memTable{slots: make([]memSlot, size), mask: uint64(size - 1)}
}

func (t *memTable) find(key uint64) *postings {
	for i := key & t.mask; ; i = (i + 1) & t.mask {
		p := t.slots[i].list.Load()
		if p == nil || t.slots[i].key.Load() == key {
			return p
		}
	}
}

func (p *postings) add(x posting) {
	if len(p.w) == cap(p.w) {
		w := make([]posting, len(p.w), 2*cap(p.w))
		copy(w, p.w)
		p.w = w
		p.pub.Store(&w)
	}
	p.w = append(p.w, x) // writes past what readers may read
	p.n.Store(int64(len(p.w)))
}

// published returns the postings published so far. n is loaded first: the
// array published with it or any later one holds its first n postings.
func (p *postings) published() []posting {
	n := p.n.Load()
	return (*p.pub.Load())[:n]
}

// Lookup returns the entries with Key key and Seq >= fromSeq added so far, in
// ascending Seq, at most limit of them (none if limit <= 0).
func (m *Mem) Lookup(key, fromSeq uint64, limit int) []Entry {
	t := m.table.Load()
	if t == nil || limit <= 0 {
		return nil
	}
	p := t.find(key)
	if p == nil {
		return nil
	}
	ps := p.published()
	base := m.base.Load()
	from := uint64(0)
	if fromSeq > base {
		from = fromSeq - base
	}
	i := sort.Search(len(ps), func(i int) bool { return uint64(ps[i].delta) >= from })
	ps = ps[i:]
	if len(ps) > limit {
		ps = ps[:limit]
	}
	if len(ps) == 0 {
		return nil
	}
	out := make([]Entry, len(ps))
	for i, x := range ps {
		out[i] = Entry{Key: key, Seq: base + uint64(x.delta), Offset: x.off}
	}
	return out
}

// Entries returns a copy of the entries added so far, sorted as a run is
// (by Key, then Seq), ready for WriteRun.
func (m *Mem) Entries() []Entry {
	t := m.table.Load()
	if t == nil {
		return nil
	}
	base := m.base.Load()
	type list struct {
		key uint64
		ps  []posting
	}
	var lists []list
	n := 0
	for i := range t.slots {
		if p := t.slots[i].list.Load(); p != nil {
			ps := p.published()
			lists = append(lists, list{t.slots[i].key.Load(), ps})
			n += len(ps)
		}
	}
	slices.SortFunc(lists, func(a, b list) int { return cmp.Compare(a.key, b.key) })
	out := make([]Entry, 0, n)
	for _, l := range lists {
		for _, x := range l.ps {
			out = append(out, Entry{Key: l.key, Seq: base + uint64(x.delta), Offset: x.off})
		}
	}
	return out
}
