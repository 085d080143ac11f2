package segindex

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// records returns the entries of records first..last as the store would
// make them: an execution key shared by 3 consecutive records, a plan key
// among 50, a user key among 13 and a type key among 5. They depend only on
// the sequence numbers, so that runs of parts of a range merge into the run
// of the whole range.
func records(first, last uint64) []Entry {
	out := make([]Entry, 0, 4*(last-first+1))
	for seq := first; seq <= last; seq++ {
		off := uint32(seq * 397)
		out = append(out,
			Entry{Key(ExecutionID, fmt.Sprintf("exec-%d", seq/3)), seq, off},
			Entry{Key(PlanID, fmt.Sprintf("plan-%d", seq%50)), seq, off},
			Entry{Key(UserID, fmt.Sprintf("user-%d", seq*7%13)), seq, off},
			Entry{Key(Type, fmt.Sprintf("type-%d", seq%5)), seq, off},
		)
	}
	return out
}

// want is Lookup's specification, applied to all entries.
func want(all []Entry, key, fromSeq uint64, limit int) []Entry {
	var out []Entry
	for _, e := range all {
		if e.Key == key && e.Seq >= fromSeq && len(out) < limit {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, compareEntries)
	return out
}

// writeOpen writes a run of entries (a copy: WriteRun sorts its input) and
// opens it with the default fence, closing it when the test ends.
func writeOpen(t testing.TB, dir string, first, last uint64, entries []Entry) *Run {
	t.Helper()
	path, err := WriteRun(dir, first, last, slices.Clone(entries))
	require.NoError(t, err)
	r, err := OpenRun(path)
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r
}

// dirNames lists the names in dir.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// writeStride writes a run of entries as WriteRun does but with a fence post
// every stride entries, and returns its path.
func writeStride(t testing.TB, dir string, first, last, stride uint64, entries []Entry) string {
	t.Helper()
	entries = slices.Clone(entries)
	slices.SortFunc(entries, compareEntries)
	path, err := createRun(dir, first, last, uint64(len(entries)), stride, func(emit func(Entry) error) error {
		for _, e := range entries {
			if err := emit(e); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	return path
}

// writeV1 writes entries in dir as a run of format version 1, valid in
// that format: a 32-byte header ("S4IDX01\n", First, Last, Count), the
// entries and the SHA-256 of both, no fence. It returns its path.
func writeV1(t testing.TB, dir string, first, last uint64, entries []Entry) string {
	t.Helper()
	entries = slices.Clone(entries)
	slices.SortFunc(entries, compareEntries)
	b := []byte("S4IDX01\n")
	b = binary.BigEndian.AppendUint64(b, first)
	b = binary.BigEndian.AppendUint64(b, last)
	b = binary.BigEndian.AppendUint64(b, uint64(len(entries)))
	var e [entrySize]byte
	for _, x := range entries {
		putEntry(e[:], x)
		b = append(b, e[:]...)
	}
	sum := sha256.Sum256(b)
	path := filepath.Join(dir, runName(first, last))
	require.NoError(t, os.WriteFile(path, append(b, sum[:]...), 0o600))
	return path
}
