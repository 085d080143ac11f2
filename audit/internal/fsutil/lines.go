package fsutil

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/stage4/stage4/audit"
)

// HashRecords adds the records in the first n bytes of r (complete
// lines) to b and writes their stored tree hashes to w, buffered. It does
// not check the chain: the caller verified the records, or something
// vouches for them.
func HashRecords(b *audit.TreeBuilder, r io.Reader, n int64, w io.Writer) error {
	lr := audit.NewLineReader(io.LimitReader(r, n))
	buf := make([]byte, 0, 64<<10)
	flush := func() error {
		if _, err := w.Write(buf); err != nil {
			return fmt.Errorf("write tree file: %w", err)
		}
		buf = buf[:0]
		return nil
	}
	for pos := int64(0); pos < n; {
		line, complete, err := lr.Next()
		if !complete {
			return fmt.Errorf("reread the log for its tree: %w", err)
		}
		pos += int64(len(line))
		hashes, err := b.Add(line[:len(line)-1])
		if err != nil {
			return err
		}
		for _, h := range hashes {
			buf = append(buf, h[:]...)
		}
		if len(buf) >= 60<<10 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// FindRecord returns the bytes (without the newline) of the record of
// sequence seq in r, a log or a segment whose first record has sequence
// first, reading from its start: records have no index there.
func FindRecord(r io.Reader, first, seq uint64) ([]byte, error) {
	lr := audit.NewLineReader(r)
	for n := first; ; n++ {
		line, complete, err := lr.Next()
		if !complete {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("the log holds no record %d (it ends at %d)", seq, n-1)
			}
			return nil, fmt.Errorf("read audit log: %w", err)
		}
		if n == seq {
			return slices.Clone(line[:len(line)-1]), nil
		}
	}
}
