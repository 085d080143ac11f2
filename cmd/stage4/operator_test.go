package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/server"
)

// logLines decodes the JSON lines of a process's stderr.
func logLines(t *testing.T, l *lines) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(l.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// TestServeReportsStage3AtStart: the mistakes an operator makes with
// --stage3-addr are in the log at start, before "serving", as one ERROR
// line with the cause and the flag that fixes it; serve serves anyway,
// not ready until Stage-3 answers.
func TestServeReportsStage3AtStart(t *testing.T) {
	t.Parallel()
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	plaintextStage3, _ := s3.servingAddr(t)
	tests := []struct {
		name      string
		stage3    []string
		wantCause string
		wantHint  string
	}{
		{
			name:      "TLS to a plaintext Stage-3 (--stage3-insecure forgotten)",
			stage3:    []string{"--stage3-addr", plaintextStage3},
			wantCause: "tls_to_plaintext",
			wantHint:  "--stage3-insecure",
		},
		{
			name:      "a mistyped host name",
			stage3:    []string{"--stage3-addr", "stage3.exmaple.invalid:443"},
			wantCause: "name_resolution",
			wantHint:  `the host name in --stage3-addr "stage3.exmaple.invalid:443" does not resolve`,
		},
		{
			name:      "a wrong port",
			stage3:    []string{"--stage3-addr", "127.0.0.1:1", "--stage3-insecure"},
			wantCause: "connection_refused",
			wantHint:  "nothing accepts connections",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s4 := start(t, nil, append([]string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
				"--audit-log", filepath.Join(t.TempDir(), "audit"), "--audit-segment-bytes", fmt.Sprint(minAuditSegmentBytes)}, tt.stage3...)...)
			addr, _ := s4.servingAddr(t)
			var report map[string]any
			for _, l := range logLines(t, s4.stderr) {
				if l["msg"] == "serving" {
					break
				}
				if l["msg"] == "stage3 unreachable at start; not ready for plans until it answers" {
					report = l
				}
			}
			require.NotNil(t, report, "reported before serving:\n%s", s4.stderr.String())
			require.Equal(t, "ERROR", report["level"])
			require.Equal(t, tt.wantCause, report["cause"])
			require.Contains(t, report["hint"], tt.wantHint)
			t.Logf("%s", s4.stderr.waitFor(t, "the report", func(l string) bool { return strings.Contains(l, `"cause":"`+tt.wantCause) }))

			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			require.NoError(t, err)
			defer conn.Close()
			hc := healthpb.NewHealthClient(conn)
			res, err := hc.Check(testContext(t), &healthpb.HealthCheckRequest{Service: "stage4.v1.Stage4Service"})
			require.NoError(t, err)
			require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, res.GetStatus(), "not ready")
			res, err = hc.Check(testContext(t), &healthpb.HealthCheckRequest{Service: gateway.LivenessService})
			require.NoError(t, err)
			require.Equal(t, healthpb.HealthCheckResponse_SERVING, res.GetStatus(), "alive")

			require.NoError(t, s4.cmd.Process.Signal(syscall.SIGTERM))
			require.Equal(t, 0, s4.exitCode(t))
		})
	}
}

// TestServeLogsWhyACallFailed: with --stage3-insecure forgotten, a plan
// fails with STAGE3_NOT_REACHED, and the server's line for it says so, with
// the cause, the execution id the caller got, its x-request-id and no
// error text; the metrics count it by reason, and PLAN_RECEIVED records
// the x-request-id.
func TestServeLogsWhyACallFailed(t *testing.T) {
	t.Parallel()
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	auditLog := filepath.Join(t.TempDir(), "audit")
	s4 := start(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--audit-log", auditLog, "--audit-segment-bytes", fmt.Sprint(minAuditSegmentBytes), "--stage3-addr", s3Addr)
	addr, metricsAddr := s4.servingAddr(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()

	ctx := metadata.AppendToOutgoingContext(testContext(t), "x-request-id", "req-7f3a")
	var header metadata.MD
	_, err = stage4v1.NewStage4ServiceClient(conn).ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)}, grpc.Header(&header))
	require.Equal(t, codes.Unavailable, status.Code(err))
	require.Equal(t, rpcerr.Stage3NotReached, rpcerr.Reason(err))
	require.Contains(t, status.Convert(err).Message(), "first record does not look like a TLS handshake", "the caller gets the transport's words")
	execID := header.Get(server.HeaderExecutionID)[0]

	line := s4.stderr.waitForLog(t, "finished call", map[string]any{"grpc.method": "ExecutePlan"})
	t.Logf("%s", s4.stderr.waitFor(t, "the line", func(l string) bool { return strings.Contains(l, `"msg":"finished call"`) }))
	require.Equal(t, "WARN", line["level"])
	for k, v := range map[string]any{
		"grpc.code": "Unavailable", "reason": "STAGE3_NOT_REACHED", "cause": "tls_to_plaintext",
		"execution_id": execID, "x_request_id": "req-7f3a",
	} {
		require.Equal(t, v, line[k], "%s in %v", k, line)
	}
	for k, v := range line {
		require.NotContains(t, fmt.Sprint(v), "handshake", "the call line holds no error text (%s)", k)
	}

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Contains(t, string(body), `stage4_failed_calls_total{grpc_code="Unavailable",grpc_method="ExecutePlan",grpc_service="stage4.v1.Stage4Service",reason="STAGE3_NOT_REACHED"} 1`)
	require.Contains(t, string(body), "stage4_stage3_reachable 0")
	require.Contains(t, string(body), `stage4_stage3_check_failures_total{cause="tls_to_plaintext"}`)

	require.NoError(t, s4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, s4.exitCode(t))
	events := logEvents(t, auditLog)[execID]
	require.NotEmpty(t, events)
	require.Equal(t, "req-7f3a", events[0].GetDetails().GetFields()["x_request_id"].GetStringValue())
}

// TestServeReportsEveryFailureAtShutdown: four plans with a hanging
// Stage-3 when serve stops answer OUTCOME_UNKNOWN together; the rate limit
// writes one line for the first, and the count of the other three goes
// out before the process exits.
func TestServeReportsEveryFailureAtShutdown(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, []string{"--hang"}, []string{"--shutdown-grace", "1s"})
	ctx := testContext(t)
	const calls = 4
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			_, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
			if rpcerr.Reason(err) != rpcerr.OutcomeUnknown {
				t.Errorf("got %v, want OUTCOME_UNKNOWN", err)
			}
		})
	}
	started := 0 // waitFor shows each line once, in order
	gw.stage3.stderr.waitFor(t, "four calls in Stage-3", func(l string) bool {
		if strings.Contains(l, `"msg":"started call"`) && strings.Contains(l, "ExecuteMultiDomainPlan") {
			started++
		}
		return started == calls
	})
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
	wg.Wait()
	require.Equal(t, 0, gw.stage4.exitCode(t))

	var failed []map[string]any
	for _, l := range logLines(t, gw.stage4.stderr) {
		if l["msg"] == "finished call" && l["reason"] == "OUTCOME_UNKNOWN" {
			failed = append(failed, l)
		}
	}
	require.Len(t, failed, 2, "%v", failed)
	require.NotContains(t, failed[0], "suppressed")
	require.Equal(t, float64(calls-1), failed[1]["suppressed"])
}
