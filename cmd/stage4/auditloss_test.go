package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

// TestServeFailsClosedWhenTheAuditLogIsRemoved deletes the audit log's
// active segment, or its whole directory, under a running serve: the next
// plan is refused with AUDIT_UNAVAILABLE without reaching Stage-3, and
// health turns NOT_SERVING with one ERROR line. After the segment's loss,
// the next start refuses the log, whose head file remembers the records,
// until told --audit-new-log. (A removed directory takes its head file
// with it: nothing is left to tell a lost log from a new one.)
func TestServeFailsClosedWhenTheAuditLogIsRemoved(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		remove  func(auditLog string) error
		restart bool
	}{
		{
			name:    "the active segment",
			remove:  func(auditLog string) error { return os.Remove(filepath.Join(auditLog, segstore.SegmentName(1))) },
			restart: true,
		},
		{name: "the directory", remove: os.RemoveAll},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			gw := startGateway(t, nil, nil)
			ctx := testContext(t)
			_, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
			require.NoError(t, err)

			watch, stopWatch := watchHealth(ctx, t, gw)

			require.NoError(t, tt.remove(gw.auditLog))

			_, err = gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
			st := status.Convert(err)
			require.Equal(t, codes.Unavailable, st.Code(), "%v", err)
			var reason string
			for _, d := range st.Details() {
				if info, ok := d.(*errdetails.ErrorInfo); ok {
					reason = info.GetReason()
				}
			}
			require.Equal(t, "AUDIT_UNAVAILABLE", reason)
			require.Equal(t, 1, stage3Calls(t, gw), "the refused plan never reached Stage-3")

			for {
				res, err := watch.Recv() // ends with ctx's deadline at the latest
				require.NoError(t, err)
				if res.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
					break
				}
			}
			stopWatch() // an open Watch stream would hold GracefulStop until the grace period ends
			fields := gw.stage4.stderr.waitForLog(t, "audit store unavailable; refusing plans", map[string]any{"level": "ERROR"})
			require.Regexp(t, `audit log segment .*`+regexp.QuoteMeta(segstore.SegmentName(1))+` was removed or renamed while in use`, fields["error"])

			require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
			gw.stage4.exitCode(t)
			require.Equal(t, 1, strings.Count(gw.stage4.stderr.String(), `"msg":"audit store unavailable; refusing plans"`), "one ERROR line")
			if !tt.restart {
				return
			}

			// The head file remembers the records the lost segment held.
			headFile := filepath.Join(gw.auditLog, segstore.HeadFile)
			s3Addr, _ := gw.stage3.servingAddr(t)
			serve := []string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--stage3-addr", s3Addr, "--stage3-insecure",
				"--audit-log", gw.auditLog}
			code, _, stderr := runStage4(t, nil, serve...)
			require.Equal(t, 1, code, "stderr: %s", stderr)
			require.Contains(t, stderr, headFile)
			require.Contains(t, stderr, "--audit-new-log")

			s4 := start(t, nil, append(serve, "--audit-new-log")...)
			s4.servingAddr(t)
			warn := s4.stderr.waitForLog(t, "began a new audit log (--audit-new-log) although the log lost records; the old head file is kept aside", nil)
			require.Regexp(t, regexp.QuoteMeta(headFile)+`\.\d+\.old$`, warn["old_head_file"])
			require.FileExists(t, warn["old_head_file"].(string))
			require.NoError(t, s4.cmd.Process.Signal(syscall.SIGTERM))
			require.Equal(t, 0, s4.exitCode(t))
			code, stdout, _ := runStage4(t, nil, "audit", "verify", gw.auditLog)
			require.Equal(t, 0, code)
			require.Contains(t, stdout, "OK 0 records")
			matches, err := filepath.Glob(headFile + ".*.old")
			require.NoError(t, err)
			require.Len(t, matches, 1)
		})
	}
}

// stage3Calls is the number of calls Stage-4 started to Stage-3, from its
// client metrics, which count a call before it is sent.
func stage3Calls(t *testing.T, gw *stage4Process) int {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), http.MethodGet, "http://"+gw.metricsAddr+"/metrics", nil)
	require.NoError(t, err)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^grpc_client_started_total\{[^}]*grpc_method="ExecuteMultiDomainPlan"[^}]*\} (\d+)$`).FindSubmatch(body)
	require.NotNil(t, m, "no Stage-3 call counter in:\n%s", body)
	n, err := strconv.Atoi(string(m[1]))
	require.NoError(t, err)
	return n
}
