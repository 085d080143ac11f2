package segindex

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

const (
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
	f                  runFile
	path               string
	first, last, count uint64

	// fence holds the (Key, Seq) of every stride-th entry, read from the
	// file's fence, so that a lookup starts bisecting from one stride
	// instead of the whole file.
	fence  []fencePost
	stride uint64
	window uint64
}

// runFile is what a Run reads: an *os.File, or in tests a wrapper that
// counts the reads.
type runFile interface {
	io.ReaderAt
	io.Closer
	Stat() (fs.FileInfo, error)
}

// OpenRun opens the run file at path, checks its header against its name
// and size, and reads its fence in one read: two reads in all, whatever the
// run's size. It does not check the checksum, which needs a read of the
// whole file: call Verify for a run this process did not write.
func OpenRun(path string) (*Run, error) {
	return openRun(path, defaultWindow)
}

// openRun is OpenRun with a chosen window, for the tests that bisect on
// disk all the way.
func openRun(path string, window uint64) (*Run, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open index run: %w", err)
	}
	return openRunFile(f, path, window)
}

// openRunFile is openRun on a file already open; it closes f on failure.
func openRunFile(f runFile, path string, window uint64) (_ *Run, err error) {
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
	r.window = max(window, 1)
	if err := r.readFence(); err != nil {
		return nil, err
	}
	return r, nil
}

// readHeader reads the header of the open run file at path, checks it
// against the file's name and size, and returns the run without a fence.
func readHeader(f runFile, path string) (*Run, error) {
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
	first, last, count, stride, err := checkHeader(h[:], filepath.Base(path), st.Size())
	if err != nil {
		return nil, err
	}
	return &Run{f: f, path: path, first: first, last: last, count: count, stride: stride}, nil
}

// readFence reads the fence section in one read and checks that its posts
// are in order and in range: a lookup's bisection relies on both. That each
// post equals the entry it samples would take a read per post to check:
// the checksum covers the fence instead (Verify), and Lookup checks the
// posts it relies on against the entries it reads.
func (r *Run) readFence() error {
	n := fenceLen(r.count, r.stride)
	b := make([]byte, postSize*n)
	if _, err := r.f.ReadAt(b, fenceOffset(r.count)); err != nil {
		return err
	}
	r.fence = make([]fencePost, n)
	for i := range r.fence {
		p := getPost(b[postSize*i:])
		if p.seq < r.first || p.seq > r.last || i > 0 && p.less(r.fence[i-1]) {
			return fmt.Errorf("fence post %d out of order or range: %w", i, ErrCorrupt)
		}
		r.fence[i] = p
	}
	return nil
}

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

// Verify reads the whole run and checks its checksum (which covers the
// fence), that its entries are in order and within First..Last, and that
// the fence OpenRun read samples them.
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
	// lo <= p <= hi, where p is the index of the first entry >= target:
	// the fence says fence[i-1] < target <= fence[i].
	lo, hi := uint64(0), r.count
	i := sort.Search(len(r.fence), func(i int) bool { return !r.fence[i].less(target) })
	if i > 0 {
		lo = uint64(i-1)*r.stride + 1
	}
	if i < len(r.fence) {
		hi = uint64(i) * r.stride
	}
	var b [postSize]byte // an entry's Key and Seq, which it starts with
	for hi-lo > r.window {
		mid := lo + (hi-lo)/2
		if _, err := r.f.ReadAt(b[:], entryOffset(mid)); err != nil {
			return nil, r.readErr(err)
		}
		if getPost(b[:]).less(target) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}

	// Read the window and, in the same read, the entry before it and room
	// for the hits after it. The entries just outside the window, lo-1 and
	// hi, are where the fence (or the bisection) put p's bounds: they are
	// checked, so that a fence that disagrees with the entries fails the
	// lookup instead of making it miss hits.
	start := lo - min(lo, 1)
	n := min(hi-start+uint64(min(limit, maxChunk)), r.count-start)
	buf := make([]byte, n*entrySize)
	if _, err := r.f.ReadAt(buf, entryOffset(start)); err != nil {
		return nil, r.readErr(err)
	}
	if start < lo {
		if err := r.checkBound(start, getEntry(buf), target, true); err != nil {
			return nil, r.readErr(err)
		}
	}
	if hi < r.count { // then hi < start+n: the read reaches it
		if err := r.checkBound(hi, getEntry(buf[(hi-start)*entrySize:]), target, false); err != nil {
			return nil, r.readErr(err)
		}
	}
	j := lo - start + uint64(sort.Search(int(hi-lo), func(k int) bool {
		e := getEntry(buf[(lo-start+uint64(k))*entrySize:])
		return !(fencePost{e.Key, e.Seq}).less(target)
	}))
	var out []Entry
	for {
		for ; j < n; j++ {
			e := getEntry(buf[j*entrySize:])
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
		start += n
		if start == r.count {
			return out, nil
		}
		n = min(uint64(min(limit-len(out), maxChunk)), r.count-start)
		if uint64(cap(buf)) < n*entrySize {
			buf = make([]byte, n*entrySize)
		}
		buf = buf[:n*entrySize]
		if _, err := r.f.ReadAt(buf, entryOffset(start)); err != nil {
			return nil, r.readErr(err)
		}
		j = 0
	}
}

// checkBound checks entry e, at index j, which Lookup took for a bound of
// the first entry >= target: below it (before says e < target) or at or
// above it. If j is a fence post, e must also equal the post.
func (r *Run) checkBound(j uint64, e Entry, target fencePost, before bool) error {
	p := fencePost{e.Key, e.Seq}
	if p.less(target) != before || j%r.stride == 0 && r.fence[j/r.stride] != p {
		return fmt.Errorf("entry %d disagrees with the fence: %w", j, ErrCorrupt)
	}
	return nil
}

func (r *Run) readErr(err error) error {
	return fmt.Errorf("look up in index run %s: %w", r.path, err)
}
