package audit_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
)

// TestParseLocation: a value that begins with a URL scheme is a URL, with
// its scheme in lower case; anything else is a path, unless it looks like
// a mistyped URL; passwords never show in what a location prints.
func TestParseLocation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		in       string
		url      bool
		scheme   string
		path     string
		redacted string
		wantErr  bool
	}{
		{name: "a directory", in: "/var/lib/stage4/audit", path: "/var/lib/stage4/audit", redacted: "/var/lib/stage4/audit"},
		{name: "a relative directory", in: "stage4-audit", path: "stage4-audit", redacted: "stage4-audit"},
		{name: "a directory with a colon, written ./", in: "./audit:2026", path: "./audit:2026", redacted: "./audit:2026"},
		{name: "a URL", in: "postgres://stage4:pw@db/stage4", url: true, scheme: "postgres", redacted: "postgres://stage4:xxxxx@db/stage4"},
		{name: "a scheme in capitals", in: "PostgreSQL://db/stage4", url: true, scheme: "postgresql", redacted: "postgresql://db/stage4"},
		{name: "an opaque URL", in: "mem:test", url: true, scheme: "mem", redacted: "mem:test"},
		{name: "an opaque URL with a password", in: "stage4:pw@db/x", url: true, scheme: "stage4", redacted: "stage4:xxxxx@db/x"},
		{name: "a password as a parameter", in: "postgres://stage4@db/x?sslmode=require&password=pw", url: true, scheme: "postgres", redacted: "postgres://stage4@db/x?sslmode=require&password=xxxxx"},
		{name: "a scheme without its colon", in: "postgresql//stage4:pw@db/x", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			loc, err := audit.ParseLocation(tt.in)
			if tt.wantErr {
				require.ErrorIs(t, err, audit.ErrLocation)
				require.NotContains(t, err.Error(), ":pw@")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.url, loc.IsURL())
			if tt.url {
				require.Equal(t, tt.scheme, loc.URL.Scheme)
			} else {
				require.Equal(t, tt.path, loc.Path)
			}
			require.Equal(t, tt.redacted, loc.Redacted())
			require.Equal(t, tt.redacted, loc.String(), "printed, a location is redacted")
		})
	}
}

// TestLookup: the registry gives each location its driver, the one a
// store registered for the scheme, and names the known schemes when it
// has none.
func TestLookup(t *testing.T) {
	t.Parallel()
	require.Contains(t, audit.Schemes(), "mem", "memstore registered itself")
	_, loc, err := audit.Resolve("MEM:lookup-test")
	require.NoError(t, err)
	s, _, err := audit.Open(context.Background(), loc.Raw, audit.OpenConfig{})
	require.NoError(t, err)
	require.IsType(t, &memstore.Store{}, s)
	require.NoError(t, s.Close())

	_, _, err = audit.Resolve("nosuch://x")
	require.ErrorIs(t, err, audit.ErrLocation)
	require.ErrorContains(t, err, `unknown scheme "nosuch"`)
	require.ErrorContains(t, err, "mem:")
}

// TestRegisterRefusesASecondDriverForAScheme: two stores cannot claim
// one scheme; that is a programming error, found at init.
func TestRegisterRefusesASecondDriverForAScheme(t *testing.T) {
	t.Parallel()
	require.Panics(t, func() { audit.Register(nil, "mem") })
}
