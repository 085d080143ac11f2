package pgstore_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/internal/pgtest"
)

// TestASecondProcessOfOneNameIsWarnedAbout: a process that opens the
// store under the name a live one holds learns it (NameTaken), and the
// driver says so in a WARN line at start; the first process, and one of
// another name, are not warned; once the holder closes, the name is free.
func TestASecondProcessOfOneNameIsWarnedAbout(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	first := open(t, url, pgstore.WithReplicaName("stage4-0"))
	require.False(t, first.NameTaken())
	other := open(t, url, pgstore.WithReplicaName("stage4-1"))
	require.False(t, other.NameTaken())

	var logs bytes.Buffer
	loc, err := audit.ParseLocation(url)
	require.NoError(t, err)
	d, _, err := audit.Resolve(url)
	require.NoError(t, err)
	second, err := d.Open(testCtx(t), loc, audit.OpenConfig{ReplicaName: "stage4-0", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err, "a warning, not a refusal")
	t.Cleanup(func() { second.Close() })
	require.True(t, second.(*pgstore.Store).NameTaken())
	require.Equal(t, 1, strings.Count(logs.String(), "level=WARN"), logs.String())
	require.Contains(t, logs.String(), "another live process holds this replica name")
	require.Contains(t, logs.String(), "replica_name=stage4-0")

	require.NoError(t, first.Close())
	third := open(t, url, pgstore.WithReplicaName("stage4-0"))
	require.False(t, third.NameTaken(), "the holder's Close freed the name")
}
