package gateway_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
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

func TestOpenStoreAfterTheLogLostRecords(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	store, err := gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	lg, err := audit.New(store)
	require.NoError(t, err)
	_, err = lg.Append(context.Background(), &stage4v1.AuditEvent{Type: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED, ExecutionId: "e"})
	require.NoError(t, err)
	require.NoError(t, lg.Close())
	require.NoError(t, os.Remove(path))

	_, err = gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path}, slog.New(slog.DiscardHandler))
	require.ErrorIs(t, err, filestore.ErrHeadMismatch)
	require.NotErrorIs(t, err, gateway.ErrConfig, "not a usage error: exit status 1")
	require.ErrorContains(t, err, path+filestore.HeadSuffix)
	require.ErrorContains(t, err, "--audit-new-log")

	var logs bytes.Buffer
	store, err = gateway.OpenStore(context.Background(), gateway.Config{AuditLog: path, NewAuditLog: true},
		slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	require.NoError(t, store.Close())
	require.Contains(t, logs.String(), "level=WARN")
	require.Contains(t, logs.String(), "began a new audit log")
	require.Contains(t, logs.String(), "old_head_file="+path+filestore.HeadSuffix+".")
}
