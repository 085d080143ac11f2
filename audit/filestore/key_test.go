package filestore_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit/filestore"
)

func TestKeyFileIsCreatedOnceAndKept(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	keyOf := func(opts ...filestore.Option) []byte {
		t.Helper()
		s, err := filestore.Open(path, opts...)
		require.NoError(t, err)
		defer func() { require.NoError(t, s.Close()) }()
		key, err := s.FingerprintKey(context.Background())
		require.NoError(t, err)
		return key
	}

	first := keyOf()
	require.Len(t, first, filestore.KeyLen)
	require.NotEqual(t, make([]byte, filestore.KeyLen), first)
	info, err := os.Stat(path + filestore.KeySuffix)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	onDisk, err := os.ReadFile(path + filestore.KeySuffix)
	require.NoError(t, err)
	require.Equal(t, first, onDisk, "the file holds the key's raw bytes")

	require.Equal(t, first, keyOf(), "the same key on every open")

	writeLog(t, path, 2)
	require.NoError(t, os.Remove(path))
	require.Equal(t, first, keyOf(filestore.WithNewLog()), "a new log keeps the store's key")

	other := logPath(t)
	s, err := filestore.Open(other)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	otherKey, err := s.FingerprintKey(context.Background())
	require.NoError(t, err)
	require.NotEqual(t, first, otherKey, "each store has a key of its own")
}

func TestFingerprintKeyReturnsACopy(t *testing.T) {
	t.Parallel()
	s, err := filestore.Open(logPath(t))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	key, err := s.FingerprintKey(context.Background())
	require.NoError(t, err)
	want := string(key)
	clear(key)
	again, err := s.FingerprintKey(context.Background())
	require.NoError(t, err)
	require.Equal(t, want, string(again))
}

func TestOpenRefusesABadKeyFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		data string
		mode os.FileMode
		want string
	}{
		{name: "readable by group", data: strings.Repeat("k", filestore.KeyLen), mode: 0o640, want: "has mode 0640"},
		{name: "readable by others", data: strings.Repeat("k", filestore.KeyLen), mode: 0o604, want: "has mode 0604"},
		{name: "too short", data: strings.Repeat("k", filestore.KeyLen-1), mode: 0o600, want: "holds 31 bytes"},
		{name: "hex instead of raw", data: strings.Repeat("ab", filestore.KeyLen), mode: 0o600, want: "holds 64 bytes"},
		{name: "empty", mode: 0o600, want: "holds 0 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			require.NoError(t, os.WriteFile(path+filestore.KeySuffix, []byte(tt.data), tt.mode))
			require.NoError(t, os.Chmod(path+filestore.KeySuffix, tt.mode)) // past the umask
			_, err := filestore.Open(path)
			require.ErrorContains(t, err, tt.want)
			require.ErrorContains(t, err, path+filestore.KeySuffix)
		})
	}
}
