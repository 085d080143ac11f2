package testkit

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit/segstore"
)

// LogLines reads the records (without their newlines) of the local audit
// log at path, a log directory or a single file, as stored, behind the
// server's back.
func LogLines(t *testing.T, path string) [][]byte {
	t.Helper()
	var data []byte
	if segstore.IsDir(path) {
		// The segments in log order (their names are their zero-padded
		// first sequence), each up to the zeros of its preallocated end.
		names, err := filepath.Glob(filepath.Join(path, "[0-9]*"+segstore.SegmentExt))
		require.NoError(t, err)
		for _, name := range names {
			seg, err := os.ReadFile(name)
			require.NoError(t, err)
			if i := bytes.IndexByte(seg, 0); i >= 0 {
				seg = seg[:i]
			}
			data = append(data, seg...)
		}
	} else {
		var err error
		data, err = os.ReadFile(path)
		require.NoError(t, err)
	}
	var lines [][]byte
	for line := range bytes.Lines(data) {
		lines = append(lines, bytes.TrimSuffix(line, []byte("\n")))
	}
	return lines
}
