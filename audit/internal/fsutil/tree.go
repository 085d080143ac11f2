package fsutil

import (
	"fmt"
	"io"

	"golang.org/x/mod/sumdb/tlog"
)

// ReadHashesAt reads stored hashes from a tree file: stored hash i is
// the 32 bytes at offset 32*i.
func ReadHashesAt(r io.ReaderAt, indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if _, err := r.ReadAt(out[i][:], x*tlog.HashSize); err != nil {
			return nil, fmt.Errorf("tree hash %d: %w", x, err)
		}
	}
	return out, nil
}
