package segindex

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestListRuns(t *testing.T) {
	t.Parallel()
	type rng struct{ first, last uint64 }
	tests := []struct {
		name      string
		runs      []rng    // runs to write
		other     []string // other files to create, with any content
		damaged   []rng    // runs to write, then damage their header
		v1        []rng    // runs to write in format version 1
		wantLive  []rng
		wantStale []string // base names
	}{
		{
			name:     "empty directory",
			wantLive: nil,
		},
		{
			name:     "consecutive runs and unrelated files",
			runs:     []rng{{11, 20}, {1, 10}, {21, 35}},
			other:    []string{"segment-00000000000000000001.jsonl", "1-10.idx", "00000000000000000000-00000000000000000005.idx", "README"},
			wantLive: []rng{{1, 10}, {11, 20}, {21, 35}},
		},
		{
			name:     "a gap is left for the store to rebuild",
			runs:     []rng{{1, 10}, {21, 30}},
			wantLive: []rng{{1, 10}, {21, 30}},
		},
		{
			name:      "crash after a merge, before removing its inputs, with a temporary file",
			runs:      []rng{{1, 10}, {11, 20}, {21, 30}, {1, 20}},
			other:     []string{runName(21, 40) + tmpInfix + "123456"},
			wantLive:  []rng{{1, 20}, {21, 30}},
			wantStale: []string{runName(1, 10), runName(11, 20), runName(21, 40) + tmpInfix + "123456"},
		},
		{
			name:      "crash after merging merges",
			runs:      []rng{{1, 40}, {1, 20}, {21, 40}, {1, 10}, {41, 41}},
			wantLive:  []rng{{1, 40}, {41, 41}},
			wantStale: []string{runName(1, 10), runName(1, 20), runName(21, 40)},
		},
		{
			name:      "a damaged merged run gives way to its inputs",
			runs:      []rng{{1, 10}, {11, 20}},
			damaged:   []rng{{1, 20}},
			wantLive:  []rng{{1, 10}, {11, 20}},
			wantStale: []string{runName(1, 20)},
		},
		{
			name:      "a run of format version 1 is stale and leaves a gap",
			runs:      []rng{{11, 20}},
			v1:        []rng{{1, 10}},
			wantLive:  []rng{{11, 20}},
			wantStale: []string{runName(1, 10)},
		},
		{
			name:      "a partial overlap is dropped and leaves a gap",
			runs:      []rng{{1, 10}, {5, 15}},
			wantLive:  []rng{{1, 10}},
			wantStale: []string{runName(5, 15)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			for _, r := range tt.runs {
				_, err := WriteRun(dir, r.first, r.last, records(r.first, r.last))
				require.NoError(t, err)
			}
			for _, r := range tt.damaged {
				path, err := WriteRun(dir, r.first, r.last, records(r.first, r.last))
				require.NoError(t, err)
				f, err := os.OpenFile(path, os.O_WRONLY, 0)
				require.NoError(t, err)
				_, err = f.WriteAt([]byte("XX"), 0)
				require.NoError(t, err)
				require.NoError(t, f.Close())
			}
			for _, r := range tt.v1 {
				writeV1(t, dir, r.first, r.last, records(r.first, r.last))
			}
			for _, name := range tt.other {
				require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600))
			}
			require.NoError(t, os.Mkdir(filepath.Join(dir, runName(100, 200)), 0o700)) // not a file

			live, stale, err := ListRuns(dir)
			require.NoError(t, err)
			var gotLive []rng
			for i, r := range live {
				gotLive = append(gotLive, rng{r.First, r.Last})
				require.Equal(t, filepath.Join(dir, runName(r.First, r.Last)), r.Path)
				require.Equal(t, uint64(4*(r.Last-r.First+1)), r.Count)
				if i > 0 {
					require.Greater(t, r.First, live[i-1].Last)
				}
			}
			require.Equal(t, tt.wantLive, gotLive)
			var gotStale []string
			for _, r := range stale {
				gotStale = append(gotStale, filepath.Base(r.Path))
			}
			slices.Sort(gotStale)
			slices.Sort(tt.wantStale)
			require.Equal(t, tt.wantStale, gotStale)
		})
	}
}

func TestListRunsMissingDir(t *testing.T) {
	t.Parallel()
	_, _, err := ListRuns(filepath.Join(t.TempDir(), "nope"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
