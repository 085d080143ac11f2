package atomicfile_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/internal/atomicfile"
)

func TestCreateAndReplace(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		write    func(path string, data []byte, perm os.FileMode) error
		existing bool
		perm     os.FileMode
		wantErr  error
		want     string
	}{
		{name: "create a new file", write: atomicfile.Create, perm: 0o644, want: "new"},
		{name: "create never replaces", write: atomicfile.Create, existing: true, perm: 0o600, wantErr: fs.ErrExist, want: "old"},
		{name: "replace an existing file", write: atomicfile.Replace, existing: true, perm: 0o600, want: "new"},
		{name: "replace where none is", write: atomicfile.Replace, perm: 0o640, want: "new"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if tt.existing {
				require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))
			}
			err := tt.write(path, []byte("new"), tt.perm)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
			} else {
				require.NoError(t, err)
				fi, err := os.Stat(path)
				require.NoError(t, err)
				require.Equal(t, tt.perm, fi.Mode().Perm(), "the mode asked for, whatever the umask")
			}
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, tt.want, string(got))
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Len(t, entries, 1, "no temporary file is left behind")
		})
	}
}
