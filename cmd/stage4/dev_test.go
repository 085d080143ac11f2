package main

import (
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

// TestDevIsQuietAndSmall: a tryout with stage4 dev logs one line per call
// (the reference Stage-3's; Stage-4 logs failures only, and nobody logs
// health checks), and its audit log takes a few MiB of disk, not the
// 128 MiB that two preallocated 64 MiB segments took.
func TestDevIsQuietAndSmall(t *testing.T) {
	t.Parallel()
	auditLog := filepath.Join(t.TempDir(), "audit")
	dev := start(t, nil, "dev", "--listen", "127.0.0.1:0", "--stage3-listen", "127.0.0.1:0",
		"--metrics-listen", "", "--audit-log", auditLog, "--log-format", "json")
	addr, _ := dev.servingAddr(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	const calls = 3
	for range calls {
		_, err = stage4v1.NewStage4ServiceClient(conn).ExecutePlan(testContext(t), &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.NoError(t, err)
	}
	dev.stderr.waitForLog(t, "finished call", map[string]any{"component": "reference-stage3", "grpc.method": "ExecuteMultiDomainPlan"})
	var callLines int
	for _, l := range logLines(t, dev.stderr) {
		if l["grpc.method"] != nil {
			require.Equal(t, "ExecuteMultiDomainPlan", l["grpc.method"], "only Stage-3's plan calls: %v", l)
			require.Equal(t, "finished call", l["msg"])
			callLines++
		}
	}
	require.Equal(t, calls, callLines, "one line per call:\n%s", dev.stderr.String())

	var size int64
	require.NoError(t, filepath.Walk(auditLog, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			size += fi.Size()
		}
		return err
	}))
	require.Less(t, size, int64(4<<20), "the log directory's files")
}

// TestDevAuditLogIsPerUser: dev's default audit log is in the temp folder,
// in a folder of the user's own.
func TestDevAuditLogIsPerUser(t *testing.T) {
	t.Parallel()
	u, err := user.Current()
	require.NoError(t, err)
	require.Equal(t, filepath.Join(os.TempDir(), "stage4-dev-"+u.Username, "audit"), defaultDevAuditLog())
	require.True(t, strings.HasPrefix(defaultDevAuditLog(), os.TempDir()))
}
