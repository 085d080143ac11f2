package segindex

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMergeRuns merges 1 to 5 runs of uneven ranges and gets, byte for
// byte, the run WriteRun makes of all their entries.
func TestMergeRuns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ends []uint64 // the Last of each input; the first starts at 1
	}{
		{"one run", []uint64{500}},
		{"two runs", []uint64{300, 500}},
		{"three runs, one empty-ish", []uint64{1, 2, 900}},
		{"four runs", []uint64{100, 101, 700, 1000}},
		{"five runs", []uint64{250, 500, 750, 1000, 3000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			var runs []*Run
			first := uint64(1)
			for _, last := range tt.ends {
				runs = append(runs, writeOpen(t, dir, first, last, records(first, last)))
				first = last + 1
			}
			last := tt.ends[len(tt.ends)-1]
			mergedDir := filepath.Join(dir, "merged")
			require.NoError(t, os.Mkdir(mergedDir, 0o700))
			path, err := MergeRuns(mergedDir, runs)
			require.NoError(t, err)

			whole, err := WriteRun(t.TempDir(), 1, last, records(1, last))
			require.NoError(t, err)
			require.Equal(t, filepath.Base(whole), filepath.Base(path))
			wantBytes, err := os.ReadFile(whole)
			require.NoError(t, err)
			gotBytes, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, wantBytes, gotBytes)

			merged, err := OpenRun(path)
			require.NoError(t, err)
			defer merged.Close()
			require.NoError(t, merged.Verify())
		})
	}
}

func TestMergeRunsRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := writeOpen(t, dir, 1, 10, records(1, 10))
	b := writeOpen(t, dir, 11, 20, records(11, 20))
	c := writeOpen(t, dir, 22, 30, records(22, 30))
	overlap := writeOpen(t, dir, 5, 20, records(5, 20))
	tests := []struct {
		name string
		runs []*Run
	}{
		{"no runs", nil},
		{"gap", []*Run{a, b, c}},
		{"out of order", []*Run{b, a}},
		{"overlap", []*Run{a, overlap}},
		{"same run twice", []*Run{a, a}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := t.TempDir()
			_, err := MergeRuns(out, tt.runs)
			require.Error(t, err)
			require.Empty(t, dirNames(t, out))
		})
	}
}

// TestMergeRunsRefusesDamage flips a byte of an input that OpenRun cannot
// see (its entries, or its fence after it was opened): the merge fails
// instead of writing a run with a valid checksum over the damage.
func TestMergeRunsRefusesDamage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		off  int64 // of the byte to flip in the second input
	}{
		{"entry", entryOffset(17) + 10},
		{"fence post", fenceOffset(4*100) + 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			a := writeOpen(t, dir, 1, 100, records(1, 100))
			b := writeOpen(t, dir, 101, 200, records(101, 200))
			raw, err := os.ReadFile(b.Path())
			require.NoError(t, err)
			raw[tt.off] ^= 0x04
			require.NoError(t, os.WriteFile(b.Path(), raw, 0o600))

			out := t.TempDir()
			_, err = MergeRuns(out, []*Run{a, b})
			require.ErrorIs(t, err, ErrCorrupt)
			require.Empty(t, dirNames(t, out))
		})
	}
}
