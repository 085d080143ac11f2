package segindex

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
)

// runReader reads a run's entries in order through a buffer, checking as it
// goes what Verify checks, so that MergeRuns never copies a damaged run into
// a new one with a valid checksum.
type runReader struct {
	r    *Run
	br   *bufio.Reader
	sum  hash.Hash
	i    uint64 // entries read
	prev Entry
	b    [entrySize]byte
}

func newRunReader(r *Run, bufSize int) (*runReader, error) {
	sum := sha256.New()
	body := io.NewSectionReader(r.f, 0, fileSize(r.count, r.stride)-sumSize)
	rr := &runReader{r: r, br: bufio.NewReaderSize(io.TeeReader(body, sum), bufSize), sum: sum}
	if _, err := io.ReadFull(rr.br, make([]byte, headerSize)); err != nil {
		return nil, rr.err(err)
	}
	return rr, nil
}

// next returns the next entry, or ok false after the last one once the
// fence and the checksum have been checked.
func (rr *runReader) next() (e Entry, ok bool, err error) {
	r := rr.r
	if rr.i == r.count {
		if err := rr.finish(); err != nil {
			return Entry{}, false, rr.err(err)
		}
		return Entry{}, false, nil
	}
	if _, err := io.ReadFull(rr.br, rr.b[:]); err != nil {
		return Entry{}, false, rr.err(err)
	}
	e = getEntry(rr.b[:])
	if e.Seq < r.first || e.Seq > r.last {
		return Entry{}, false, rr.err(fmt.Errorf("entry seq %d outside the run: %w", e.Seq, ErrCorrupt))
	}
	if rr.i > 0 && compareEntries(rr.prev, e) > 0 {
		return Entry{}, false, rr.err(fmt.Errorf("entries out of order: %w", ErrCorrupt))
	}
	// The fence OpenRun read must sample the entries; finish checks that
	// it is what the file holds.
	if rr.i%r.stride == 0 && r.fence[rr.i/r.stride] != (fencePost{e.Key, e.Seq}) {
		return Entry{}, false, rr.err(fmt.Errorf("fence post %d differs from entry %d: %w", rr.i/r.stride, rr.i, ErrCorrupt))
	}
	rr.i++
	rr.prev = e
	return e, true, nil
}

// finish reads the fence section, checks it against the fence OpenRun read,
// and checks the checksum of everything read.
func (rr *runReader) finish() error {
	r := rr.r
	for i, want := range r.fence {
		if _, err := io.ReadFull(rr.br, rr.b[:postSize]); err != nil {
			return err
		}
		if getPost(rr.b[:]) != want {
			return fmt.Errorf("fence post %d changed since the run was opened: %w", i, ErrCorrupt)
		}
	}
	var want [sumSize]byte
	if _, err := r.f.ReadAt(want[:], fileSize(r.count, r.stride)-sumSize); err != nil {
		return err
	}
	if !bytes.Equal(rr.sum.Sum(nil), want[:]) {
		return fmt.Errorf("checksum mismatch: %w", ErrCorrupt)
	}
	return nil
}

func (rr *runReader) err(err error) error {
	return fmt.Errorf("read index run %s: %w", rr.r.path, err)
}
