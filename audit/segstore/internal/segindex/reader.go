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
	left uint64 // entries not yet read
	prev Entry
	b    [entrySize]byte
}

func newRunReader(r *Run, bufSize int) (*runReader, error) {
	sum := sha256.New()
	body := io.NewSectionReader(r.f, 0, fileSize(r.count)-sumSize)
	rr := &runReader{r: r, br: bufio.NewReaderSize(io.TeeReader(body, sum), bufSize), sum: sum, left: r.count}
	if _, err := io.ReadFull(rr.br, make([]byte, headerSize)); err != nil {
		return nil, rr.err(err)
	}
	return rr, nil
}

// next returns the next entry, or ok false after the last one once the
// checksum has been checked.
func (rr *runReader) next() (e Entry, ok bool, err error) {
	if rr.left == 0 {
		var want [sumSize]byte
		if _, err := rr.r.f.ReadAt(want[:], fileSize(rr.r.count)-sumSize); err != nil {
			return Entry{}, false, rr.err(err)
		}
		if !bytes.Equal(rr.sum.Sum(nil), want[:]) {
			return Entry{}, false, rr.err(fmt.Errorf("checksum mismatch: %w", ErrCorrupt))
		}
		return Entry{}, false, nil
	}
	if _, err := io.ReadFull(rr.br, rr.b[:]); err != nil {
		return Entry{}, false, rr.err(err)
	}
	e = getEntry(rr.b[:])
	if e.Seq < rr.r.first || e.Seq > rr.r.last {
		return Entry{}, false, rr.err(fmt.Errorf("entry seq %d outside the run: %w", e.Seq, ErrCorrupt))
	}
	if rr.left < rr.r.count && compareEntries(rr.prev, e) > 0 {
		return Entry{}, false, rr.err(fmt.Errorf("entries out of order: %w", ErrCorrupt))
	}
	rr.left--
	rr.prev = e
	return e, true, nil
}

func (rr *runReader) err(err error) error {
	return fmt.Errorf("read index run %s: %w", rr.r.path, err)
}
