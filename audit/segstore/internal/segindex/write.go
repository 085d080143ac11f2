package segindex

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// WriteRun writes the run covering the records first..last from entries,
// which it sorts in place, and returns its path. Every entry's Seq must be
// within first..last. The run appears under its final name complete and
// durable or not at all, and replaces a run of the same range (the same
// records give the same run). Memory beyond entries is one write buffer.
func WriteRun(dir string, first, last uint64, entries []Entry) (string, error) {
	if first == 0 || first > last {
		return "", fmt.Errorf("write index run: bad range %d..%d", first, last)
	}
	// Mem.Entries is already sorted, and sorting sorted input is a linear pass.
	slices.SortFunc(entries, compareEntries)
	return createRun(dir, first, last, uint64(len(entries)), fenceStride, func(emit func(Entry) error) error {
		for _, e := range entries {
			if e.Seq < first || e.Seq > last {
				return fmt.Errorf("entry seq %d outside %d..%d", e.Seq, first, last)
			}
			if err := emit(e); err != nil {
				return err
			}
		}
		return nil
	})
}

// createRun writes a run of count entries, which fill passes in order to
// emit, followed by its fence, a post every stride entries, under a
// temporary name, fsyncs it, renames it to its final name and fsyncs dir, so
// that a crash leaves the old state or the new one plus, at worst, a
// temporary file that ListRuns reports.
func createRun(dir string, first, last, count, stride uint64, fill func(emit func(Entry) error) error) (_ string, err error) {
	path := filepath.Join(dir, runName(first, last))
	defer func() {
		if err != nil {
			err = fmt.Errorf("write index run %s: %w", path, err)
		}
	}()
	f, err := os.CreateTemp(dir, runName(first, last)+tmpInfix+"*")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()

	sum := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, sum), 256<<10)
	var b [headerSize]byte
	putHeader(b[:], first, last, count, stride)
	w.Write(b[:]) // a bufio.Writer keeps its first error for Flush
	// The fence is collected while the entries stream past, 16 bytes per
	// stride entries, and written after them.
	fence := make([]fencePost, 0, fenceLen(count, stride))
	var n uint64
	err = fill(func(e Entry) error {
		if n%stride == 0 {
			fence = append(fence, fencePost{e.Key, e.Seq})
		}
		n++
		putEntry(b[:], e)
		_, err := w.Write(b[:entrySize])
		return err
	})
	if err != nil {
		return "", err
	}
	if n != count {
		return "", fmt.Errorf("wrote %d entries, header says %d", n, count)
	}
	for _, p := range fence {
		putPost(b[:], p)
		w.Write(b[:postSize])
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	if _, err := f.Write(sum.Sum(nil)); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return "", err
	}
	if err := syncDir(dir); err != nil {
		return "", err
	}
	return path, nil
}

// syncDir makes the entries of dir, such as a rename into it, durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
