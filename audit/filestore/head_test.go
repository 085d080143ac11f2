package filestore_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
)

// headFile reads the head file of the log at path.
func headFile(t *testing.T, path string) (seq uint64, hash string) {
	t.Helper()
	data, err := os.ReadFile(path + filestore.HeadSuffix)
	require.NoError(t, err)
	var h struct {
		Sequence uint64 `json:"sequence"`
		Hash     string `json:"hash"`
	}
	require.NoError(t, json.Unmarshal(data, &h))
	return h.Sequence, h.Hash
}

// writeLog writes a log of n records at path and closes it; it returns the
// records' hashes.
func writeLog(t *testing.T, path string, n int) []string {
	t.Helper()
	lg, err := open(path)
	require.NoError(t, err)
	var hashes []string
	for range n {
		ev, err := lg.Append(context.Background(), event(failed, "e", "u"))
		require.NoError(t, err)
		hashes = append(hashes, ev.GetHash())
	}
	require.NoError(t, lg.Close())
	return hashes
}

func TestHeadFileNamesTheLastDurableRecord(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg, _ := openQuietLog(t, path)
	_, err := os.Stat(path + filestore.HeadSuffix)
	require.ErrorIs(t, err, os.ErrNotExist, "an empty log has nothing to protect")

	ev, err := lg.Append(context.Background(), event(received, "e1", "u"))
	require.NoError(t, err)
	_, err = os.Stat(path + filestore.HeadSuffix)
	require.ErrorIs(t, err, os.ErrNotExist, "not written on the append path")

	require.NoError(t, lg.store.Ping(context.Background()))
	seq, hash := headFile(t, path)
	require.Equal(t, uint64(1), seq)
	require.Equal(t, ev.GetHash(), hash)
	info, err := os.Stat(path + filestore.HeadSuffix)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	// A record not yet durable is not named.
	require.NoError(t, lg.AppendUnsynced(context.Background(), event(received, "e2", "u")))
	require.NoError(t, lg.store.Ping(context.Background()))
	seq, _ = headFile(t, path)
	require.Equal(t, uint64(1), seq)

	last, err := lg.Append(context.Background(), event(failed, "e2", "u"))
	require.NoError(t, err)
	require.NoError(t, lg.Close())
	seq, hash = headFile(t, path)
	require.Equal(t, uint64(3), seq)
	require.Equal(t, last.GetHash(), hash)

	matches, err := filepath.Glob(path + "*.tmp-*")
	require.NoError(t, err)
	require.Empty(t, matches, "no temporary files left behind")
}

func TestRestartRefusesALogThatLostRecords(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// change damages the log at path, which held 3 records.
		change func(t *testing.T, path string)
		found  string // what the error says the log holds
		next   uint64 // the sequence of the first record WithNewLog appends
	}{
		{name: "removed", found: `audit\.jsonl does not exist`, next: 1,
			change: func(t *testing.T, path string) { require.NoError(t, os.Remove(path)) }},
		{name: "renamed away and recreated empty", found: `holds no records`, next: 1,
			change: func(t *testing.T, path string) {
				require.NoError(t, os.Rename(path, path+".1"))
				require.NoError(t, os.WriteFile(path, nil, 0o600))
			}},
		{name: "truncated below the head", found: `holds only 1 records`, next: 2,
			change: func(t *testing.T, path string) {
				require.NoError(t, os.WriteFile(path, readLines(t, path)[0], 0o600))
			}},
		{name: "replaced by another, longer log", found: `record 3 of .* has hash sha256:[0-9a-f]{64}: another log`, next: 6,
			change: func(t *testing.T, path string) {
				other := logPath(t)
				writeLog(t, other, 5)
				data, err := os.ReadFile(other)
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(path, data, 0o600))
			}},
		{name: "head file unreadable", found: `head file .*audit\.jsonl\.head is unreadable`, next: 4,
			change: func(t *testing.T, path string) {
				require.NoError(t, os.WriteFile(path+filestore.HeadSuffix, []byte("{\"sequence\":3,\n"), 0o600))
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			writeLog(t, path, 3)
			oldHead, err := os.ReadFile(path + filestore.HeadSuffix)
			require.NoError(t, err)
			tt.change(t, path)
			before, err := os.ReadFile(path + filestore.HeadSuffix)
			require.NoError(t, err)

			_, err = open(path)
			require.ErrorIs(t, err, filestore.ErrHeadMismatch)
			require.ErrorContains(t, err, path+filestore.HeadSuffix)
			require.ErrorContains(t, err, "open audit log "+path)
			require.Regexp(t, tt.found, err.Error())
			after, err := os.ReadFile(path + filestore.HeadSuffix)
			require.NoError(t, err)
			require.Equal(t, before, after, "a refused start leaves the head file alone")
			if tt.name == "removed" {
				_, err := os.Stat(path)
				require.ErrorIs(t, err, os.ErrNotExist, "a refused start creates no log")
			}

			lg := openLog(t, path, filestore.WithNewLog())
			rec := lg.store.Recovery()
			require.Regexp(t, `audit\.jsonl\.head\.\d+\.old$`, rec.OldHeadFile)
			require.Regexp(t, tt.found, rec.HeadMismatch)
			kept, err := os.ReadFile(rec.OldHeadFile)
			require.NoError(t, err)
			require.Equal(t, before, kept, "the old head file is kept aside")
			if tt.name != "head file unreadable" {
				require.Equal(t, oldHead, kept)
			}
			ev, err := lg.Append(context.Background(), event(received, "new", "u"))
			require.NoError(t, err)
			require.Equal(t, tt.next, ev.GetSequence())
			require.NoError(t, lg.Close())

			// The new log has a head file of its own, and starts normally.
			seq, hash := headFile(t, path)
			require.Equal(t, tt.next, seq)
			require.Equal(t, ev.GetHash(), hash)
			lg = openLog(t, path)
			require.Empty(t, lg.store.Recovery().OldHeadFile)
		})
	}
}

func TestRestartAcceptsAMatchingLog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T, path string) (next uint64)
	}{
		{name: "clean stop", setup: func(t *testing.T, path string) uint64 {
			writeLog(t, path, 3)
			return 4
		}},
		{name: "head file behind the log (a crash before the next ping)", setup: func(t *testing.T, path string) uint64 {
			// A copy of the files taken while the store runs is what a
			// crash leaves: the head file names the last pinged record.
			lg, _ := openQuietLog(t, path)
			mustAppend(t, lg, event(failed, "e", "u"))
			require.NoError(t, lg.store.Ping(context.Background()))
			mustAppend(t, lg, event(failed, "e", "u"), event(failed, "e", "u"))
			copied := logPath(t)
			for _, suffix := range []string{"", filestore.HeadSuffix, filestore.KeySuffix} {
				data, err := os.ReadFile(path + suffix)
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(copied+suffix, data, 0o600))
			}
			require.NoError(t, lg.Close())
			require.NoError(t, os.Rename(copied, path))
			require.NoError(t, os.Rename(copied+filestore.HeadSuffix, path+filestore.HeadSuffix))
			seq, _ := headFile(t, path)
			require.Equal(t, uint64(1), seq)
			return 4
		}},
		{name: "empty log that never had records, key file only", setup: func(t *testing.T, path string) uint64 {
			// The key file shows that a store was opened here, not that
			// it ever held records: only the head file counts.
			writeLog(t, path, 0)
			require.FileExists(t, path+filestore.KeySuffix)
			require.NoError(t, os.Remove(path))
			return 1
		}},
		{name: "no head file yet (a log from before head files)", setup: func(t *testing.T, path string) uint64 {
			writeLog(t, path, 2)
			require.NoError(t, os.Remove(path+filestore.HeadSuffix))
			return 3
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			next := tt.setup(t, path)
			lg := openLog(t, path)
			require.Empty(t, lg.store.Recovery().OldHeadFile)
			if next > 1 {
				seq, _ := headFile(t, path)
				require.Equal(t, next-1, seq, "Open names the log's end at once")
			}
			ev, err := lg.Append(context.Background(), event(received, "e", "u"))
			require.NoError(t, err)
			require.Equal(t, next, ev.GetSequence())
		})
	}
}

func TestWithNewLogChangesNothingOnAMatchingLog(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	writeLog(t, path, 2)
	lg := openLog(t, path, filestore.WithNewLog())
	require.Equal(t, filestore.Recovery{Records: 2}, lg.store.Recovery())
	ev, err := lg.Append(context.Background(), event(received, "e", "u"))
	require.NoError(t, err)
	require.Equal(t, uint64(3), ev.GetSequence())
	matches, err := filepath.Glob(path + filestore.HeadSuffix + ".*.old")
	require.NoError(t, err)
	require.Empty(t, matches)
}

func TestFailedStoreStillNamesItsLastRecordAtClose(t *testing.T) {
	t.Parallel()
	// Removed under a running store that never pinged: Close writes the
	// head file from what was durable, so that the next start refuses.
	path := logPath(t)
	lg, _ := openQuietLog(t, path)
	mustAppend(t, lg, event(received, "e", "u"), event(failed, "e", "u"))
	require.NoError(t, os.Remove(path))
	_, err := lg.Append(context.Background(), event(received, "e2", "u"))
	require.ErrorIs(t, err, audit.ErrDataLoss)
	require.NoError(t, lg.Close())
	seq, _ := headFile(t, path)
	require.Equal(t, uint64(2), seq)
	_, err = open(path)
	require.ErrorIs(t, err, filestore.ErrHeadMismatch)
}
