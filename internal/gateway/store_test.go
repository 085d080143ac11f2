package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
)

func TestLoadFingerprintKey(t *testing.T) {
	t.Parallel()
	key32 := strings.Repeat("k", 32)
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		missing bool
		want    string // error text; "" for success
	}{
		{name: "32 raw bytes", content: key32, mode: 0o600},
		{name: "owner read-only", content: key32 + "more", mode: 0o400},
		{name: "readable by group", content: key32, mode: 0o640, want: "has mode 0640"},
		{name: "readable by others", content: key32, mode: 0o604, want: "has mode 0604"},
		{name: "writable by group", content: key32, mode: 0o620, want: "has mode 0620"},
		{name: "too short", content: key32[:31], mode: 0o600, want: "holds 31 bytes; the key needs at least 32"},
		{name: "empty", mode: 0o600, want: "holds 0 bytes"},
		{name: "far too long", content: strings.Repeat("k", 5000), mode: 0o600, want: "not a key file"},
		{name: "missing", missing: true, want: "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "fingerprint.key")
			if !tt.missing {
				require.NoError(t, os.WriteFile(path, []byte(tt.content), tt.mode))
				require.NoError(t, os.Chmod(path, tt.mode)) // past the umask
			}
			key, err := gateway.LoadFingerprintKey(path)
			if tt.want != "" {
				require.ErrorContains(t, err, tt.want)
				require.ErrorContains(t, err, path)
				require.ErrorIs(t, err, gateway.ErrConfig)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.content, string(key), "the file's bytes are the key")
		})
	}
}

func TestFingerprintKeyPrefersTheKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	store, err := filestore.Open(filepath.Join(dir, "audit.jsonl"))
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	storeKey, err := store.FingerprintKey(context.Background())
	require.NoError(t, err)

	key, err := gateway.FingerprintKey(context.Background(), store, gateway.Config{})
	require.NoError(t, err)
	require.Equal(t, storeKey, key, "without a key file, the store's key")

	keyFile := filepath.Join(dir, "fingerprint.key")
	require.NoError(t, os.WriteFile(keyFile, bytes.Repeat([]byte{7}, 32), 0o600))
	key, err = gateway.FingerprintKey(context.Background(), store, gateway.Config{FingerprintKeyFile: keyFile})
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{7}, 32), key, "the key file wins")

	require.NoError(t, os.Chmod(keyFile, 0o644))
	_, err = gateway.FingerprintKey(context.Background(), store, gateway.Config{FingerprintKeyFile: keyFile})
	require.ErrorContains(t, err, "has mode 0644", "a bad key file is refused, not replaced by the store's key")
}

// appendEvents appends n events to store through the audit package and
// closes it.
func appendEvents(t *testing.T, store audit.Store, n int, detail string) {
	t.Helper()
	lg, err := audit.New(store)
	require.NoError(t, err)
	for i := range n {
		_, err = lg.Append(context.Background(), &stage4v1.AuditEvent{
			Type: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED, ExecutionId: fmt.Sprintf("e%d", i),
			Details: &structpb.Struct{Fields: map[string]*structpb.Value{"note": structpb.NewStringValue(detail)}},
		})
		require.NoError(t, err)
	}
	require.NoError(t, lg.Close())
}

// logRecord returns the fields of the first JSON log line in logs whose
// msg is msg, or nil.
func logRecord(t *testing.T, logs *bytes.Buffer, msg string) map[string]any {
	t.Helper()
	for line := range strings.SplitSeq(strings.TrimSpace(logs.String()), "\n") {
		m := map[string]any{}
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		if m["msg"] == msg {
			return m
		}
	}
	return nil
}

// TestOpenStoreChoosesTheStore: a path that holds nothing yet or a
// directory is a log directory; a regular file is a single-file log from
// before segments, kept as it is, and so is a missing file whose head file
// is still there (a lost single-file log must be refused, not replaced by
// an empty directory).
func TestOpenStoreChoosesTheStore(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		prepare     func(t *testing.T, path string)
		segmentSize int64
		wantDir     bool
		wantErr     error
		wantLog     string // the msg of an INFO line
	}{
		{name: "nothing yet", prepare: func(*testing.T, string) {}, wantDir: true, wantLog: "audit log opened: a directory of segments"},
		{name: "an empty directory", prepare: func(t *testing.T, path string) { require.NoError(t, os.Mkdir(path, 0o700)) },
			wantDir: true, wantLog: "audit log opened: a directory of segments"},
		{
			name: "a single-file log",
			prepare: func(t *testing.T, path string) {
				s, err := filestore.Open(path)
				require.NoError(t, err)
				appendEvents(t, s, 2, "old")
			},
			wantLog: "the audit log is a single file, from before logs were directories of segments: " +
				"it is appended to as one file, without segments (new logs are directories)",
		},
		{
			name: "a lost single-file log",
			prepare: func(t *testing.T, path string) {
				s, err := filestore.Open(path)
				require.NoError(t, err)
				appendEvents(t, s, 2, "old")
				require.NoError(t, os.Remove(path))
			},
			wantErr: filestore.ErrHeadMismatch,
		},
		{name: "segments below the minimum", prepare: func(*testing.T, string) {}, segmentSize: segstore.MinSegmentBytes - 1, wantErr: gateway.ErrConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "audit")
			tt.prepare(t, path)
			var logs bytes.Buffer
			store, err := gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path, AuditSegmentBytes: tt.segmentSize},
				slog.New(slog.NewJSONHandler(&logs, nil)))
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				_, statErr := os.Stat(path)
				require.ErrorIs(t, statErr, fs.ErrNotExist, "nothing was created at the path")
				return
			}
			require.NoError(t, err)
			t.Cleanup(func() { store.Close() })
			require.NotNil(t, logRecord(t, &logs, tt.wantLog), logs.String())
			if tt.wantDir {
				require.IsType(t, &segstore.Store{}, store)
				require.DirExists(t, path)
				return
			}
			require.IsType(t, &filestore.Store{}, store)
			appendEvents(t, store, 1, "new")
			res, err := filestore.Verify(path)
			require.NoError(t, err)
			require.Equal(t, uint64(3), res.Records, "appended to the file")
		})
	}
}

// TestOpenStoreReportsWhatALogDirectoryHolds: the INFO line of a log
// directory's start says how many records and segments it holds, how
// many are archived, how many records start-up verified, how many
// segments' indexes it rebuilds and how long it took.
func TestOpenStoreReportsWhatALogDirectoryHolds(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit")
	cfg := gateway.Config{AuditLog: path, AuditSegmentBytes: segstore.MinSegmentBytes}
	open := func() (audit.Store, *bytes.Buffer) {
		var logs bytes.Buffer
		store, err := gateway.OpenStore(context.Background(), cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
		require.NoError(t, err)
		return store, &logs
	}
	store, _ := open()
	// About 1 KiB a record: four segments of a page, the last one active.
	appendEvents(t, store, 14, strings.Repeat("x", 900))

	seals, _, err := segstore.ReadSeals(filepath.Join(path, segstore.SealsFile))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(seals), 3)
	// Archive the oldest segment and drop the index, which is rebuilt.
	archived := filepath.Join(t.TempDir(), segstore.SegmentName(1))
	require.NoError(t, os.Rename(filepath.Join(path, segstore.SegmentName(1)), archived))
	require.NoError(t, os.RemoveAll(filepath.Join(path, segstore.IndexDir)))

	store, logs := open()
	require.NoError(t, store.Close())
	opened := logRecord(t, logs, "audit log opened: a directory of segments")
	require.NotNil(t, opened, logs.String())
	require.Equal(t, "INFO", opened["level"])
	require.Equal(t, path, opened["audit_log"])
	require.EqualValues(t, 14, opened["records"])
	require.EqualValues(t, len(seals), opened["sealed_segments"])
	require.EqualValues(t, 1, opened["archived_segments"])
	require.EqualValues(t, 14-seals[len(seals)-1].Last, opened["verified_records"], "the active segment only")
	require.EqualValues(t, len(seals)-1, opened["index_rebuilds"], "the sealed segments still in the directory")
	require.Contains(t, opened, "open_ms")
	require.NotNil(t, logRecord(t, logs, "sealed audit log segments are archived (not in the directory): their records are not listed"))
	require.NotNil(t, logRecord(t, logs, "rebuilding the index of sealed audit log segments in the background; listings read those segments meanwhile"))
}

// TestOpenStoreAfterTheLogLostRecords: a local log that lost its records
// is refused with a hint, and taken as it is with --audit-new-log, for a
// log directory (whose active segment is gone) and for a single file.
func TestOpenStoreAfterTheLogLostRecords(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		path     string
		create   func(t *testing.T, path string) audit.Store
		lose     string // what is removed, relative to path
		headFile string // relative to path
	}{
		{
			name: "log directory",
			path: "audit",
			create: func(t *testing.T, path string) audit.Store {
				s, err := gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path}, slog.New(slog.DiscardHandler))
				require.NoError(t, err)
				return s
			},
			lose:     "/" + segstore.SegmentName(1),
			headFile: "/" + segstore.HeadFile,
		},
		{
			name: "single file",
			path: "audit.jsonl",
			create: func(t *testing.T, path string) audit.Store {
				s, err := filestore.Open(path)
				require.NoError(t, err)
				return s
			},
			headFile: filestore.HeadSuffix,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), tt.path)
			appendEvents(t, tt.create(t, path), 1, "lost")
			require.NoError(t, os.Remove(path+tt.lose))

			_, err := gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path}, slog.New(slog.DiscardHandler))
			require.ErrorIs(t, err, segstore.ErrHeadMismatch)
			require.ErrorIs(t, err, filestore.ErrHeadMismatch, "one error value for both local stores")
			require.NotErrorIs(t, err, gateway.ErrConfig, "not a usage error: exit status 1")
			require.ErrorContains(t, err, path+tt.headFile)
			require.ErrorContains(t, err, "--audit-new-log")

			var logs bytes.Buffer
			store, err := gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path, NewAuditLog: true},
				slog.New(slog.NewTextHandler(&logs, nil)))
			require.NoError(t, err)
			require.NoError(t, store.Close())
			require.Contains(t, logs.String(), "level=WARN")
			require.Contains(t, logs.String(), "began a new audit log")
			require.Contains(t, logs.String(), "old_head_file="+path+tt.headFile+".")
		})
	}
}
