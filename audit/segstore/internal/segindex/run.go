package segindex

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

const (
	// defaultFenceStride is how many entries apart the fence posts that
	// OpenRun keeps in memory are: 16 bytes per 1024 entries (160 KB for
	// 10M entries) turn a lookup's ~24 disk bisection reads into ~3.
	defaultFenceStride = 1024
	// defaultWindow is the span, in entries, below which a lookup stops
	// bisecting with small reads and reads the whole span at once.
	defaultWindow = 128
	// maxChunk caps the entries a lookup reads at once when collecting hits,
	// so that a large limit on a key with many entries costs bounded memory
	// per read.
	maxChunk = 4096
)

// Run is an open run file. Its methods are safe for concurrent use; Close
// must not be called before the other calls return.
type Run struct {
	f                  *os.File
	path               string
	first, last, count uint64

	// fence holds the (Key, Seq) of every stride-th entry, so that a lookup
	// starts bisecting from one stride instead of the whole file.
	fence  []fencePost
	stride uint64
	window uint64
}

type fencePost struct{ key, seq uint64 }

// OpenRun opens the run file at path and checks its header against its name
// and size. It does not check the checksum, which needs a read of the whole
// file: call Verify for a run this process did not write.
func OpenRun(path string) (*Run, error) {
	return openRun(path, defaultFenceStride, defaultWindow)
}

// openRun is OpenRun with a chosen fence stride (0 for none) and window, for
// the benchmarks that justify the defaults.
func openRun(path string, stride, window uint64) (_ *Run, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open index run: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			err = fmt.Errorf("open index run %s: %w", path, err)
		}
	}()
	r, err := readHeader(f, path)
	if err != nil {
		return nil, err
	}
	r.stride, r.window = stride, max(window, 1)
	if err := r.readFence(); err != nil {
		return nil, err
	}
	return r, nil
}

// readHeader reads the header of the open run file at path, checks it
// against the file's name and size, and returns the run without a fence.
func readHeader(f *os.File, path string) (*Run, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < headerSize {
		return nil, fmt.Errorf("short file: %w", ErrCorrupt)
	}
	var h [headerSize]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return nil, err
	}
	first, last, count, err := checkHeader(h[:], filepath.Base(path), st.Size())
	if err != nil {
		return nil, err
	}
	return &Run{f: f, path: path, first: first, last: last, count: count}, nil
}

// readFence reads the fence posts, one small read each, and checks that
// they are in order and in range: a lookup's bisection relies on both.
func (r *Run) readFence() error {
	if r.stride == 0 {
		return nil
	}
	r.fence = make([]fencePost, 0, (r.count+r.stride-1)/r.stride)
	var b [16]byte
	for i := uint64(0); i < r.count; i += r.stride {
		if _, err := r.f.ReadAt(b[:], entryOffset(i)); err != nil {
			return err
		}
		p := fencePost{binary.BigEndian.Uint64(b[:]), binary.BigEndian.Uint64(b[8:])}
		if p.seq < r.first || p.seq > r.last || len(r.fence) > 0 && p.less(r.fence[len(r.fence)-1]) {
			return fmt.Errorf("entry %d out of order or range: %w", i, ErrCorrupt)
		}
		r.fence = append(r.fence, p)
	}
	return nil
}

func (p fencePost) less(q fencePost) bool {
	return p.key < q.key || p.key == q.key && p.seq < q.seq
}

func entryOffset(i uint64) int64 { return headerSize + entrySize*int64(i) }

// Path returns the path the run was opened from.
func (r *Run) Path() string { return r.path }

// First returns the sequence number of the first record the run covers.
func (r *Run) First() uint64 { return r.first }

// Last returns the sequence number of the last record the run covers.
func (r *Run) Last() uint64 { return r.last }

// Count returns the number of entries in the run.
func (r *Run) Count() uint64 { return r.count }

// Close closes the run file.
func (r *Run) Close() error { return r.f.Close() }

// Verify reads the whole run and checks its checksum and that its entries are
// in order and within First..Last.
func (r *Run) Verify() error {
	rr, err := newRunReader(r, 256<<10)
	if err != nil {
		return err
	}
	for {
		_, ok, err := rr.next()
		if err != nil || !ok {
			return err
		}
	}
}

// Lookup returns the entries with Key key and Seq >= fromSeq, in ascending
// Seq, at most limit of them (none if limit <= 0). It finds the stride of
// 1024 entries that holds the first hit in the fence, bisects it on disk with
// 3 small reads, then reads the hits sequentially: 4 reads for a key with
// few entries, whatever the size of the run.
func (r *Run) Lookup(key, fromSeq uint64, limit int) ([]Entry, error) {
	if limit <= 0 || r.count == 0 {
		return nil, nil
	}
	target := fencePost{key, fromSeq}
	// lo <= p <= hi, where p is the index of the first entry >= target.
	lo, hi := uint64(0), r.count
	if len(r.fence) > 0 {
		i := sort.Search(len(r.fence), func(i int) bool { return !r.fence[i].less(target) })
		if i > 0 {
			lo = uint64(i-1)*r.stride + 1
		}
		if i < len(r.fence) {
			hi = uint64(i) * r.stride
		}
	}
	var b [16]byte
	for hi-lo > r.window {
		mid := lo + (hi-lo)/2
		if _, err := r.f.ReadAt(b[:], entryOffset(mid)); err != nil {
			return nil, r.readErr(err)
		}
		if (fencePost{binary.BigEndian.Uint64(b[:]), binary.BigEndian.Uint64(b[8:])}).less(target) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}

	// Read the window and, in the same read, room for the hits after it.
	n := min(hi-lo+uint64(min(limit, maxChunk)), r.count-lo)
	buf := make([]byte, n*entrySize)
	if _, err := r.f.ReadAt(buf, entryOffset(lo)); err != nil {
		return nil, r.readErr(err)
	}
	i := uint64(sort.Search(int(hi-lo), func(i int) bool {
		e := getEntry(buf[i*entrySize:])
		return !(fencePost{e.Key, e.Seq}).less(target)
	}))
	var out []Entry
	for {
		for ; i < n; i++ {
			e := getEntry(buf[i*entrySize:])
			if e.Key != key {
				return out, nil
			}
			if out == nil {
				out = make([]Entry, 0, min(limit, 16)) // most keys have few entries per run
			}
			out = append(out, e)
			if len(out) == limit {
				return out, nil
			}
		}
		// The hits go on past what was read: read the next chunk.
		lo += n
		if lo == r.count {
			return out, nil
		}
		n = min(uint64(min(limit-len(out), maxChunk)), r.count-lo)
		if uint64(cap(buf)) < n*entrySize {
			buf = make([]byte, n*entrySize)
		}
		buf = buf[:n*entrySize]
		if _, err := r.f.ReadAt(buf, entryOffset(lo)); err != nil {
			return nil, r.readErr(err)
		}
		i = 0
	}
}

func (r *Run) readErr(err error) error {
	return fmt.Errorf("look up in index run %s: %w", r.path, err)
}
