package gateway_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"

	"github.com/stage4/stage4/internal/gateway"
)

// TestLoadSigningKeys: every --audit-signing-key is loaded with its
// verifier key; keys of different names cannot sign one log.
func TestLoadSigningKeys(t *testing.T) {
	t.Parallel()
	write := func(name string) (string, string) {
		skey, vkey, err := note.GenerateKey(rand.Reader, name)
		require.NoError(t, err)
		p := filepath.Join(t.TempDir(), "key")
		require.NoError(t, os.WriteFile(p, []byte(skey+"\n"), 0o600))
		return p, vkey
	}
	a, aV := write("stage4.test/audit")
	b, bV := write("stage4.test/audit")
	c, _ := write("stage4.test/other")

	keys, err := gateway.LoadSigningKeys([]string{a, b})
	require.NoError(t, err)
	require.Len(t, keys, 2)
	require.Equal(t, aV, keys[0].VerifierKey)
	require.Equal(t, bV, keys[1].VerifierKey)

	keys, err = gateway.LoadSigningKeys(nil)
	require.NoError(t, err)
	require.Empty(t, keys)

	_, err = gateway.LoadSigningKeys([]string{a, c})
	require.ErrorIs(t, err, gateway.ErrConfig)
	require.ErrorContains(t, err, "named stage4.test/audit and stage4.test/other")
}
