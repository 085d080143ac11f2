package gateway_test

import (
	"bufio"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// scrapeSeries returns the series of the gateway's /metrics as a map from
// "name{labels}" (as exposed) to value.
func scrapeSeries(t *testing.T, addr net.Addr) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	series := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, line)
		series[line[:i]] = v
	}
	require.NoError(t, sc.Err())
	return series
}

// seriesWith returns the series of scrapeSeries's result whose name is name and
// whose labels include each of labels (`key="value"`).
func seriesWith(series map[string]float64, name string, labels ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range series {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(k, l)
		}
		if ok {
			out[k] = v
		}
	}
	return out
}

// watchHealth watches svc's health on conn until it is want.
func watchHealth(t *testing.T, conn *grpc.ClientConn, svc string, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	watch, err := healthpb.NewHealthClient(conn).Watch(testContext(t), &healthpb.HealthCheckRequest{Service: svc})
	require.NoError(t, err)
	for {
		res, err := watch.Recv()
		require.NoError(t, err, "waiting for %s to be %s", svc, want)
		if res.GetStatus() == want {
			return
		}
	}
}

// TestGatewayReadinessFollowsStage3: Stage-3 is checked at start and then
// every interval; while it does not answer, readiness (the overall status
// and Stage4Service) is NOT_SERVING and stage4_stage3_reachable is 0,
// while liveness stays SERVING; plans fail with STAGE3_NOT_REACHED, and
// their log line names the cause. Once Stage-3 is back, readiness is
// SERVING again and plans run, without a restart.
func TestGatewayReadinessFollowsStage3(t *testing.T) {
	t.Parallel()
	ref, err := stage3ref.NewServer(stage3ref.NewService())
	require.NoError(t, err)
	addr := ref.Addr
	var logs syncBuffer
	gw := startGatewayLogging(t, gateway.Config{
		Stage3:              stage3client.Config{Target: addr, Insecure: true},
		MetricsListen:       "127.0.0.1:0",
		Stage3CheckInterval: 20 * time.Millisecond,
	}, slog.New(slog.NewJSONHandler(&logs, nil)))
	conn, err := grpc.NewClient(gw.addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	client := stage4v1.NewStage4ServiceClient(conn)
	ctx := testContext(t)
	watchHealth(t, conn, "", healthpb.HealthCheckResponse_SERVING)
	require.Equal(t, 1.0, scrapeSeries(t, gw.addrs.Metrics)["stage4_stage3_reachable"])

	require.NoError(t, ref.Close())
	for _, svc := range []string{"", "stage4.v1.Stage4Service"} {
		watchHealth(t, conn, svc, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: gateway.LivenessService})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, res.GetStatus(), "liveness does not follow Stage-3")
	series := scrapeSeries(t, gw.addrs.Metrics)
	require.Equal(t, 0.0, series["stage4_stage3_reachable"])
	require.NotEmpty(t, seriesWith(series, "stage4_stage3_check_failures_total"))

	md := metadata.Pairs("x-request-id", "req-during-outage")
	_, err = client.ExecutePlan(metadata.NewOutgoingContext(ctx, md), &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.Equal(t, codes.Unavailable, status.Code(err))
	require.Equal(t, rpcerr.Stage3NotReached, rpcerr.Reason(err))
	var line map[string]any
	for _, l := range logs.lines() {
		if l["msg"] == "finished call" && l["reason"] == "STAGE3_NOT_REACHED" {
			line = l
		}
	}
	require.NotNil(t, line, "the failed call is logged")
	require.Equal(t, "connection_refused", line["cause"])
	require.Equal(t, "req-during-outage", line["x_request_id"])
	require.Len(t, line["execution_id"], 32)

	// Stage-3 back on its address.
	lis, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	ref = stage3ref.Serve(lis, stage3ref.NewService())
	t.Cleanup(func() { _ = ref.Close() })
	watchHealth(t, conn, "stage4.v1.Stage4Service", healthpb.HealthCheckResponse_SERVING)
	_, err = client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)

	// A change of cause (a connection reset as Stage-3 stopped, then
	// refused) is a line of its own; one line per state here.
	var msgs []string
	for _, l := range logs.lines() {
		m := l["msg"].(string)
		watcher := strings.HasPrefix(m, "stage3 answers") || strings.HasPrefix(m, "stage3 unreachable") || strings.HasPrefix(m, "stage3 reachable")
		if watcher && (len(msgs) == 0 || msgs[len(msgs)-1] != m) {
			msgs = append(msgs, m)
		}
	}
	require.Equal(t, []string{"stage3 answers", "stage3 unreachable; not ready for plans until it answers",
		"stage3 reachable again; ready for plans"}, msgs)
}

// TestGatewayServesWithAnUnreachableStage3: a Stage-3 that cannot be
// reached at start is reported before "serving", with its cause and the
// fix; the gateway serves anyway (Stage-3 may be starting too), not ready
// until Stage-3 answers.
func TestGatewayServesWithAnUnreachableStage3(t *testing.T) {
	t.Parallel()
	plain, err := stage3ref.NewServer(stage3ref.NewService())
	require.NoError(t, err)
	t.Cleanup(func() { _ = plain.Close() })
	var logs syncBuffer
	// TLS (no --stage3-insecure) to a plaintext Stage-3.
	gw := startGatewayLogging(t, gateway.Config{
		Stage3:        stage3client.Config{Target: plain.Addr},
		MetricsListen: "127.0.0.1:0",
	}, slog.New(slog.NewJSONHandler(&logs, nil)))
	var msgs []string
	var report map[string]any
	for _, l := range logs.lines() {
		msgs = append(msgs, l["msg"].(string))
		if strings.HasPrefix(l["msg"].(string), "stage3 unreachable") {
			report = l
		}
	}
	require.NotNil(t, report, "%v", msgs)
	require.Equal(t, "ERROR", report["level"])
	require.Equal(t, "tls_to_plaintext", report["cause"])
	require.Contains(t, report["hint"], "--stage3-insecure")
	require.Equal(t, plain.Addr, report["stage3_addr"])
	require.Less(t, indexOf(msgs, report["msg"].(string)), indexOf(msgs, "serving"), "reported before serving: %v", msgs)

	conn, err := grpc.NewClient(gw.addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	for svc, want := range map[string]healthpb.HealthCheckResponse_ServingStatus{
		"":                        healthpb.HealthCheckResponse_NOT_SERVING,
		"stage4.v1.Stage4Service": healthpb.HealthCheckResponse_NOT_SERVING,
		gateway.LivenessService:   healthpb.HealthCheckResponse_SERVING,
	} {
		res, err := hc.Check(testContext(t), &healthpb.HealthCheckRequest{Service: svc})
		require.NoError(t, err)
		require.Equal(t, want, res.GetStatus(), "service %q", svc)
	}
	series := scrapeSeries(t, gw.addrs.Metrics)
	require.Equal(t, 0.0, series["stage4_stage3_reachable"])
	require.Equal(t, 1.0, series[`stage4_stage3_check_failures_total{cause="tls_to_plaintext"}`])
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return len(list)
}

// TestGatewayMetricsSayWhatFailed: refusals while the audit store is down
// count as failed appends (stage4_audit_append_failures_total) and as
// failed calls by reason; successful Stage-3 calls are counted by code
// without the health checks; the build and the checkpoints have their
// gauges.
func TestGatewayMetricsSayWhatFailed(t *testing.T) {
	t.Parallel()
	ref, err := stage3ref.NewServer(stage3ref.NewService())
	require.NoError(t, err)
	t.Cleanup(func() { _ = ref.Close() })
	keyFile, _ := writeSigningKey(t, "stage4.test/audit")
	store, fail := failableStore(t)
	gw := startGateway(t, gateway.Config{
		Stage3:               stage3client.Config{Target: ref.Addr, Insecure: true},
		Store:                store,
		MetricsListen:        "127.0.0.1:0",
		AuditSigningKeyFiles: []string{keyFile},
		CheckpointInterval:   10 * time.Millisecond,
		Stage3CheckInterval:  10 * time.Millisecond,
		Revision:             "feedface",
	})
	conn, err := grpc.NewClient(gw.addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	client := stage4v1.NewStage4ServiceClient(conn)
	ctx := testContext(t)

	_, err = client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)
	// The checkpoint catches up with the three records.
	for series := scrapeSeries(t, gw.addrs.Metrics); series["stage4_audit_checkpoint_tree_size"] != 3; series = scrapeSeries(t, gw.addrs.Metrics) {
		require.NoError(t, ctx.Err(), "the checkpoint did not reach 3 records")
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}) // a round trip between scrapes, not a sleep
		require.NoError(t, err)
	}
	series := scrapeSeries(t, gw.addrs.Metrics)
	require.Contains(t, series, "stage4_audit_checkpoint_age_seconds")
	require.Equal(t, 1.0, series[`grpc_client_handled_total{grpc_code="OK",grpc_method="ExecuteMultiDomainPlan",grpc_service="stage3.v1.Stage3Service",grpc_type="unary"}`])
	require.Empty(t, seriesWith(series, "grpc_client_started_total", `grpc_service="grpc.health.v1.Health"`), "health checks are not counted as Stage-3 calls")
	build := seriesWith(series, "stage4_build_info")
	require.Len(t, build, 1)
	for k, v := range build {
		require.Equal(t, 1.0, v)
		require.Contains(t, k, `go_version="go`)
		require.Contains(t, k, `revision="`)
	}

	fail.Store(true)
	const refused = 3
	for range refused + 1 {
		_, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.Equal(t, codes.Unavailable, status.Code(err))
		require.Equal(t, rpcerr.AuditUnavailable, rpcerr.Reason(err))
	}
	series = scrapeSeries(t, gw.addrs.Metrics)
	// The first call's append failed; the log then refused the others
	// before any append.
	require.GreaterOrEqual(t, series["stage4_audit_append_failures_total"], float64(refused+1))
	require.Equal(t, float64(refused+1), series[`stage4_failed_calls_total{grpc_code="Unavailable",grpc_method="ExecutePlan",grpc_service="stage4.v1.Stage4Service",reason="AUDIT_UNAVAILABLE"}`])
}

// failableStore is an audit log directory whose writes fail once the
// returned flag is set.
func failableStore(t *testing.T) (audit.Store, *atomic.Bool) {
	t.Helper()
	fail := new(atomic.Bool)
	store, err := segstore.Open(filepath.Join(t.TempDir(), "audit"), segstore.WithSegmentBytes(1<<20),
		segstore.WithFileWrapper(func(f segstore.File) segstore.File { return &failingWrite{File: f, fail: fail} }))
	require.NoError(t, err)
	return store, fail
}
