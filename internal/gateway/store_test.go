package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
	"github.com/stage4/stage4/audit/segstore"
	"github.com/stage4/stage4/internal/gateway"
)

func TestLoadFingerprintKey(t *testing.T) {
	t.Parallel()
	key32 := strings.Repeat("k", 32)
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		// rootOwned makes root the file's owner, else another user.
		rootOwned bool
		missing   bool
		want      string // error text; "" for success
	}{
		{name: "32 raw bytes", content: key32, mode: 0o600},
		{name: "owner read-only", content: key32 + "more", mode: 0o400},
		{name: "readable by group", content: key32, mode: 0o640, want: "has mode 0640"},
		{name: "readable by others", content: key32, mode: 0o604, want: "has mode 0604"},
		{name: "writable by group", content: key32, mode: 0o620, want: "has mode 0620"},
		{name: "root's, readable by group (a Secret under fsGroup)", content: key32, mode: 0o440, rootOwned: true},
		{name: "root's, writable by group", content: key32, mode: 0o660, rootOwned: true, want: "has mode 0660"},
		{name: "root's, readable by others", content: key32, mode: 0o444, rootOwned: true, want: "has mode 0444"},
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
				ownFile(t, path, tt.rootOwned)
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

// ownFile gives the file at path to root, or else to a user other than
// root; a test that needs a change of owner it cannot make skips.
func ownFile(t *testing.T, path string, root bool) {
	t.Helper()
	switch {
	case root && os.Geteuid() != 0:
		t.Skip("making a file root's needs root")
	case !root && os.Geteuid() == 0:
		require.NoError(t, os.Chown(path, 65532, 65532))
	}
}

func TestFingerprintKeyPrefersTheKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	store := memstore.Open(memstore.NewStorage(), "")
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
		_, err = lg.Append(context.Background(), audit.Event{
			Type: audit.ExecutionFailed, ExecutionID: fmt.Sprintf("e%d", i),
			Details: audit.Details{"note": detail},
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

// TestOpenStoreParsesTheLocation: --audit-log is parsed, not guessed. A
// value with a URL scheme is a URL, served only if a driver knows its
// scheme (case-insensitive); anything else is a directory, unless it looks
// like a mistyped URL. What is refused is a usage error whose message
// never holds the password, and nothing is created at the path.
func TestOpenStoreParsesTheLocation(t *testing.T) {
	t.Parallel()
	const password = "s3cret-pw"
	tests := []struct {
		name    string
		loc     string // relative to a temp dir unless it has a scheme
		prepare func(t *testing.T, path string)
		wantErr string
		want    any // the store's type when it opens
	}{
		{name: "nothing yet", loc: "audit", want: &segstore.Store{}},
		{name: "an empty directory", loc: "audit", prepare: func(t *testing.T, path string) { require.NoError(t, os.Mkdir(path, 0o700)) },
			want: &segstore.Store{}},
		{name: "a directory whose name has a colon", loc: "./audit:2026", want: &segstore.Store{}},
		{name: "a registered scheme in capitals", loc: "MEM:capitals", want: &memstore.Store{}},
		{name: "a misspelt scheme", loc: "postgress://stage4:" + password + "@db.example/stage4", wantErr: `unknown scheme "postgress"`},
		{name: "a scheme without its colon", loc: "postgresql//stage4:" + password + "@db.example/stage4", wantErr: "looks like a URL with a mistake"},
		{name: "user information on a path", loc: "stage4:" + password + "@db.example/stage4", wantErr: "unknown scheme"},
		{name: "a single-file log", loc: "audit.jsonl", prepare: func(t *testing.T, path string) {
			require.NoError(t, os.WriteFile(path, []byte("{}\n"), 0o600))
		}, wantErr: "a single-file audit log"},
		{name: "a segment file", loc: "audit/" + segstore.SegmentName(1), prepare: func(t *testing.T, path string) {
			require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o700))
			require.NoError(t, os.WriteFile(path, nil, 0o600))
		}, wantErr: "one segment file of a log directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			loc := tt.loc
			if !strings.Contains(loc, ":") || strings.HasPrefix(loc, "./") {
				loc = filepath.Join(dir, loc)
			}
			if tt.prepare != nil {
				tt.prepare(t, loc)
			}
			before, err := os.ReadDir(dir)
			require.NoError(t, err)
			store, err := gateway.OpenStore(context.Background(), gateway.Config{AuditLog: loc,
				AuditStore: audit.OpenConfig{SegmentBytes: segstore.MinSegmentBytes}}, slog.New(slog.DiscardHandler))
			if tt.wantErr != "" {
				require.ErrorIs(t, err, gateway.ErrConfig, "a usage error: exit status 2")
				require.ErrorContains(t, err, tt.wantErr)
				require.NotContains(t, err.Error(), password)
				after, err := os.ReadDir(dir)
				require.NoError(t, err)
				require.Equal(t, before, after, "nothing was created")
				return
			}
			require.NoError(t, err)
			t.Cleanup(func() { store.Close() })
			require.IsType(t, tt.want, store)
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
	cfg := gateway.Config{AuditLog: path, AuditStore: audit.OpenConfig{SegmentBytes: segstore.MinSegmentBytes}}
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

// TestOpenStoreAfterTheLogLostRecords: a log directory that lost records
// (its active segment is gone) is refused with a hint, and taken as it is
// with --audit-new-log.
func TestOpenStoreAfterTheLogLostRecords(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit")
	s, err := gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	appendEvents(t, s, 1, "lost")
	require.NoError(t, os.Remove(filepath.Join(path, segstore.SegmentName(1))))

	_, err = gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path}, slog.New(slog.DiscardHandler))
	require.ErrorIs(t, err, segstore.ErrHeadMismatch)
	require.NotErrorIs(t, err, gateway.ErrConfig, "not a usage error: exit status 1")
	require.ErrorContains(t, err, filepath.Join(path, segstore.HeadFile))
	require.ErrorContains(t, err, "--audit-new-log")

	var logs bytes.Buffer
	store, err := gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path, AuditStore: audit.OpenConfig{NewLog: true}},
		slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	require.NoError(t, store.Close())
	require.Contains(t, logs.String(), "level=WARN")
	require.Contains(t, logs.String(), "began a new audit log")
	require.Contains(t, logs.String(), "old_head_file="+filepath.Join(path, segstore.HeadFile)+".")
}
