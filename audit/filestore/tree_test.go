package filestore_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
)

// hashList is every stored hash of a tree, computed by tlog from the log's
// lines: the reference for the tree file.
type hashList []tlog.Hash

func (l hashList) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		out[i] = l[x]
	}
	return out, nil
}

// treeOfLog computes the stored hashes of the log file at path with tlog.
func treeOfLog(t *testing.T, path string) hashList {
	t.Helper()
	var all hashList
	for i, line := range readLines(t, path) {
		if len(line) == 0 || line[len(line)-1] != '\n' {
			break // the final "" after the last newline, or a torn line
		}
		hashes, err := tlog.StoredHashes(int64(i), line[:len(line)-1], all)
		require.NoError(t, err)
		all = append(all, hashes...)
	}
	return all
}

// writeHeadFile makes the head file name record seq of the log at path,
// as a head file that lagged the log when the process was killed.
func writeHeadFile(t *testing.T, path string, seq int) {
	t.Helper()
	ev, _, err := audit.ParseRecord(bytes.TrimSuffix(readLines(t, path)[seq-1], []byte("\n")))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path+filestore.HeadSuffix, fmt.Appendf(nil, `{"sequence":%d,"hash":%q}`+"\n", seq, ev.GetHash()), 0o600))
}

// TestTreeFileAfterACrash damages the tree file in each way a crash or an
// operator can and checks that Open brings it back to exactly the log's
// stored hashes, rehashing only what it cannot trust: nothing after a
// clean stop, the records after the head file's after a crash, all of
// them (with a reason for the operator) when the tree file is missing or
// belongs to another log.
func TestTreeFileAfterACrash(t *testing.T) {
	t.Parallel()
	const records = 37
	tests := []struct {
		name       string
		damage     func(t *testing.T, path string)
		recomputed uint64
		rebuilt    string // a substring of Recovery.TreeRebuilt; "" for none
	}{
		{name: "clean stop", damage: func(*testing.T, string) {}},
		{
			name:       "tree file missing",
			damage:     func(t *testing.T, path string) { require.NoError(t, os.Remove(path+filestore.TreeSuffix)) },
			recomputed: records, rebuilt: "missing",
		},
		{
			name: "tree file behind the log: killed between the two writes",
			damage: func(t *testing.T, path string) {
				require.NoError(t, os.Truncate(path+filestore.TreeSuffix, tlog.StoredHashCount(records-1)*tlog.HashSize))
				writeHeadFile(t, path, 30)
			},
			recomputed: records - 30,
		},
		{
			name: "unsynced hashes zeroed by a power cut",
			damage: func(t *testing.T, path string) {
				f, err := os.OpenFile(path+filestore.TreeSuffix, os.O_WRONLY, 0)
				require.NoError(t, err)
				zeros := make([]byte, (tlog.StoredHashCount(records)-tlog.StoredHashCount(30))*tlog.HashSize)
				_, err = f.WriteAt(zeros, tlog.StoredHashCount(30)*tlog.HashSize)
				require.NoError(t, err)
				require.NoError(t, f.Close())
				writeHeadFile(t, path, 30)
			},
			recomputed: records - 30,
		},
		{
			name: "tree file ahead of the log: a torn last line",
			damage: func(t *testing.T, path string) {
				appendTo(t, path, []byte(`{"sequence":38,"ti`))
				appendTo(t, path+filestore.TreeSuffix, make([]byte, 2*tlog.HashSize+7))
			},
		},
		{
			name: "tree file shorter than the head file's record",
			damage: func(t *testing.T, path string) {
				require.NoError(t, os.Truncate(path+filestore.TreeSuffix, tlog.StoredHashCount(10)*tlog.HashSize))
			},
			recomputed: records, rebuilt: "fewer",
		},
		{
			name: "tree file of another log",
			damage: func(t *testing.T, path string) {
				require.NoError(t, os.WriteFile(path+filestore.TreeSuffix, make([]byte, tlog.StoredHashCount(records)*tlog.HashSize), 0o600))
			},
			recomputed: records, rebuilt: "leaf hash",
		},
		{
			name: "no head file: nothing is known to be durable",
			damage: func(t *testing.T, path string) {
				require.NoError(t, os.Remove(path+filestore.HeadSuffix))
			},
			recomputed: records,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			writeLog(t, path, records)
			tt.damage(t, path)

			lg := openLog(t, path)
			rec := lg.store.Recovery()
			require.Equal(t, tt.recomputed, rec.TreeRecomputed)
			if tt.rebuilt == "" {
				require.Empty(t, rec.TreeRebuilt)
			} else {
				require.Contains(t, rec.TreeRebuilt, tt.rebuilt)
			}
			requireTreeFile(t, path, lg.store)

			// The tree goes on from the repaired file.
			mustAppend(t, lg, event(failed, "e", "u"))
			requireTreeFile(t, path, lg.store)
			require.NoError(t, lg.Close())
			again := openLog(t, path)
			require.Zero(t, again.store.Recovery().TreeRecomputed, "after a clean stop nothing is rehashed")
			requireTreeFile(t, path, again.store)
		})
	}
}

// requireTreeFile checks that the tree file holds exactly the stored
// hashes of the log at path, and that the store serves them and its
// durable head's edge.
func requireTreeFile(t *testing.T, path string, s *filestore.Store) {
	t.Helper()
	want := treeOfLog(t, path)
	data, err := os.ReadFile(path + filestore.TreeSuffix)
	require.NoError(t, err)
	require.Len(t, data, len(want)*tlog.HashSize)
	idx := make([]int64, len(want))
	for i := range idx {
		idx[i] = int64(i)
	}
	got, err := s.ReadHashes(context.Background(), idx)
	require.NoError(t, err)
	require.Equal(t, []tlog.Hash(want), got)
	head, err := s.DurableHead(context.Background())
	require.NoError(t, err)
	edge, err := want.ReadHashes(audit.EdgeIndexes(int64(head.Sequence)))
	require.NoError(t, err)
	if len(edge) == 0 {
		edge = nil
	}
	require.Equal(t, edge, head.Tree)
}

func appendTo(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write(data)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// TestNewLogSetsTheCheckpointAside: a log begun anew (WithNewLog) does not
// extend the old log's checkpoint, which is kept aside with the head file.
func TestNewLogSetsTheCheckpointAside(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	writeLog(t, path, 3)
	cp := []byte(audit.FormatCheckpoint("example.com/log", audit.TreeHead{Size: 3}) + "\n\u2014 example.com/log AAAAAA==\n")
	require.NoError(t, os.WriteFile(path+filestore.CheckpointSuffix, cp, 0o600))
	require.NoError(t, os.Remove(path))

	s, err := filestore.Open(path, filestore.WithNewLog())
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	_, err = s.LoadCheckpoint(context.Background())
	require.ErrorIs(t, err, audit.ErrNoCheckpoint)
	_, err = os.Stat(path + filestore.CheckpointSuffix)
	require.ErrorIs(t, err, os.ErrNotExist)
}
