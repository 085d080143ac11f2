package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
)

// stage4Process is a running "stage4 serve" in front of a running
// "stage4 reference-stage3", both children of the test.
type stage4Process struct {
	stage3      *proc
	stage4      *proc
	addr        string
	metricsAddr string
	auditLog    string
	client      stage4v1.Stage4ServiceClient
	conn        *grpc.ClientConn
}

// startGateway starts the reference Stage-3 with stage3Args and Stage-4
// (serve) with serveArgs in front of it, on free loopback ports, and
// connects a client. The audit log is a new log directory, whose path
// reaches serve through STAGE4_AUDIT_LOG, exercising the environment
// fallback of its flags.
func startGateway(t *testing.T, stage3Args, serveArgs []string) *stage4Process {
	t.Helper()
	return startGatewayOn(t, filepath.Join(t.TempDir(), "audit"), nil, stage3Args, serveArgs)
}

// startGatewayOn is startGateway on the audit log at auditLog, with env
// added to serve's environment. Segments are the smallest serve accepts,
// unless env says otherwise: the default 64 MiB would have every test
// write 128 MiB of zeros (the active segment and the next one, both
// preallocated).
func startGatewayOn(t *testing.T, auditLog string, env, stage3Args, serveArgs []string) *stage4Process {
	t.Helper()
	s3 := start(t, nil, append([]string{"reference-stage3", "--listen", "127.0.0.1:0"}, stage3Args...)...)
	s3Addr, _ := s3.servingAddr(t)

	env = append([]string{"STAGE4_AUDIT_LOG=" + auditLog, fmt.Sprintf("STAGE4_AUDIT_SEGMENT_BYTES=%d", minAuditSegmentBytes)}, env...)
	s4 := start(t, env, append([]string{
		"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--stage3-addr", s3Addr, "--stage3-insecure",
	}, serveArgs...)...)
	addr, metricsAddr := s4.servingAddr(t)
	require.NotEmpty(t, metricsAddr)

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return &stage4Process{
		stage3: s3, stage4: s4, addr: addr, metricsAddr: metricsAddr, auditLog: auditLog,
		client: stage4v1.NewStage4ServiceClient(conn), conn: conn,
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// TestServeEndToEnd drives the real binary over loopback TCP: health,
// reflection, an executed plan, a refused plan, metrics, and a clean
// SIGTERM that leaves an intact audit log.
func TestServeEndToEnd(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, nil, nil)
	ctx := testContext(t)

	t.Run("health is SERVING", func(t *testing.T) {
		hc := healthpb.NewHealthClient(gw.conn)
		for _, svc := range []string{"", "stage4.v1.Stage4Service"} {
			res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			require.NoError(t, err, "service %q", svc)
			require.Equal(t, healthpb.HealthCheckResponse_SERVING, res.GetStatus(), "service %q", svc)
		}
	})

	t.Run("reflection lists the service", func(t *testing.T) {
		stream, err := reflectionpb.NewServerReflectionClient(gw.conn).ServerReflectionInfo(ctx)
		require.NoError(t, err)
		require.NoError(t, stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
		}))
		res, err := stream.Recv()
		require.NoError(t, err)
		require.NoError(t, stream.CloseSend())
		var names []string
		for _, s := range res.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		require.Contains(t, names, "stage4.v1.Stage4Service")
		require.Contains(t, names, "grpc.health.v1.Health")
	})

	t.Run("a valid plan executes", func(t *testing.T) {
		res, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.NoError(t, err)
		require.NotEmpty(t, res.GetExecutionId())
		require.Regexp(t, `^hmac-sha256:[0-9a-f]{64}$`, res.GetPlanId())
		require.Len(t, res.GetResult().GetResults(), 3)
		require.Equal(t, 6.0, res.GetResult().GetResults()[2].GetOutput().GetFields()["length"].GetNumberValue())
	})

	t.Run("an invalid plan is refused", func(t *testing.T) {
		plan := testkit.Plan(t)
		plan.Steps = nil
		_, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: plan})
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	})

	t.Run("metrics cover server, client and audit", func(t *testing.T) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+gw.metricsAddr+"/metrics", nil)
		require.NoError(t, err)
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		require.Contains(t, string(body), `grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="ExecutePlan"`)
		require.Contains(t, string(body), `grpc_client_handling_seconds_count{grpc_method="ExecuteMultiDomainPlan"`)
		require.Contains(t, string(body), `stage4_audit_appends_total`)
	})

	t.Run("logs carry no payloads", func(t *testing.T) {
		gw.stage4.stderr.waitForLog(t, "finished call", map[string]any{"grpc.method": "ExecutePlan"})
		logs := gw.stage4.stderr.String()
		require.NotContains(t, logs, "alice-token")
		require.NotContains(t, logs, "hello")      // a parameter value
		require.NotContains(t, logs, "grpc.error") // error messages can quote user data
	})

	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, gw.stage4.exitCode(t))
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", gw.auditLog)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
}

// TestServeShutdownFinishesInFlightCall sends SIGTERM while a slow plan is
// running in Stage-3: health turns NOT_SERVING, the call still succeeds,
// its terminal audit event is written, and stage4 exits 0.
func TestServeShutdownFinishesInFlightCall(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, []string{"--delay", "2s"}, []string{"--shutdown-grace", "30s"})
	ctx := testContext(t)

	// Watch health before the signal to see the NOT_SERVING that comes first.
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch, err := healthpb.NewHealthClient(gw.conn).Watch(watchCtx, &healthpb.HealthCheckRequest{Service: "stage4.v1.Stage4Service"})
	require.NoError(t, err)
	first, err := watch.Recv()
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, first.GetStatus())

	type result struct {
		res *stage4v1.ExecutePlanResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		done <- result{res, err}
	}()
	// The reference Stage-3 logs the call's start before its delay: from
	// then on the plan is in flight in Stage-4.
	gw.stage3.stderr.waitForLog(t, "started call", map[string]any{"grpc.method": "ExecuteMultiDomainPlan"})
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))

	next, err := watch.Recv()
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, next.GetStatus())
	stopWatch() // an open Watch stream would hold GracefulStop until the grace period ends

	r := <-done
	require.NoError(t, r.err)
	require.Len(t, r.res.GetResult().GetResults(), 3)
	require.Equal(t, 0, gw.stage4.exitCode(t))

	code, stdout, stderr := runStage4(t, nil, "audit", "verify", gw.auditLog)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	require.Equal(t, []stage4v1.AuditEventType{
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED,
	}, executions(t, gw.auditLog)[r.res.GetExecutionId()])
}

// TestServeShutdownCancelsCallsAfterGrace sends SIGTERM while Stage-3 hangs:
// after --shutdown-grace the call is cancelled and answered UNKNOWN with
// OUTCOME_UNKNOWN (never UNAVAILABLE, which meshes retry: the plan reached
// Stage-3), it still gets its terminal audit event before the log is
// closed, and stage4 exits 0. The execution id arrived before Stage-3 was
// even called.
func TestServeShutdownCancelsCallsAfterGrace(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, []string{"--hang"}, []string{"--shutdown-grace", "1s"})
	ctx := testContext(t)

	stream, id := testkit.StartExecutePlan(ctx, t, gw.conn, testkit.Plan(t))
	gw.stage3.stderr.waitForLog(t, "started call", map[string]any{"grpc.method": "ExecuteMultiDomainPlan"})
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))

	err := stream.RecvMsg(&stage4v1.ExecutePlanResponse{})
	require.Equal(t, codes.Unknown, status.Code(err), "%v", err)
	require.Equal(t, rpcerr.OutcomeUnknown, rpcerr.Reason(err))
	require.Equal(t, 0, gw.stage4.exitCode(t))
	gw.stage4.stderr.waitForLog(t, "grace period over; cancelling the remaining calls", nil)

	code, stdout, stderr := runStage4(t, nil, "audit", "verify", gw.auditLog)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	execs := executions(t, gw.auditLog)
	require.Len(t, execs, 1)
	require.Equal(t, []stage4v1.AuditEventType{
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED,
	}, execs[id])
}

// executions reads the audit log (JSON lines in AuditEvent's protojson
// form) and returns the event types of each execution, in log order.
func executions(t *testing.T, path string) map[string][]stage4v1.AuditEventType {
	t.Helper()
	types := map[string][]stage4v1.AuditEventType{}
	for _, line := range testkit.LogLines(t, path) {
		ev := &stage4v1.AuditEvent{}
		require.NoError(t, protojson.Unmarshal(line, ev))
		types[ev.GetExecutionId()] = append(types[ev.GetExecutionId()], ev.GetType())
	}
	return types
}
