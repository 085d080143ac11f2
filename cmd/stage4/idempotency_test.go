package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/faultfs"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/server"
	"github.com/stage4/stage4/stage3client/testpki"
)

// The outcome table of ExecutePlanRequest.request_id (README, "Retries"),
// row by row through the real binary, on a log directory and on replicas
// of one PostgreSQL store.

// keyedAnswer is the answer to an ExecutePlan with a request_id.
type keyedAnswer struct {
	resp     *stage4v1.ExecutePlanResponse
	err      error
	execID   string // the x-stage4-execution-id header
	replayed bool   // x-stage4-replayed: true
}

func callKeyed(ctx context.Context, client stage4v1.Stage4ServiceClient, plan *stage4v1.Plan, id string) keyedAnswer {
	var md metadata.MD
	resp, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: plan, RequestId: id}, grpc.Header(&md))
	a := keyedAnswer{resp: resp, err: err}
	if ids := md.Get(server.HeaderExecutionID); len(ids) == 1 {
		a.execID = ids[0]
	}
	a.replayed = strings.Join(md.Get(server.HeaderReplayed), ",") == "true"
	return a
}

// retryKeyed calls as a client that retries ABORTED (the first call is in
// progress) and UNAVAILABLE (nothing ran), with backoff, and returns the
// first other answer; it fails the test when that takes too long.
func retryKeyed(ctx context.Context, t *testing.T, client stage4v1.Stage4ServiceClient, plan *stage4v1.Plan, id string) keyedAnswer {
	t.Helper()
	wait := 20 * time.Millisecond
	for {
		a := callKeyed(ctx, client, plan, id)
		if c := status.Code(a.err); c != codes.Aborted && c != codes.Unavailable {
			return a
		}
		select {
		case <-ctx.Done():
			t.Fatalf("still %v after retrying: %v", status.Code(a.err), a.err)
		case <-time.After(wait): // the client's backoff
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// requireAnswer checks an error's code and reason.
func requireAnswer(t *testing.T, err error, code codes.Code, reason stage4v1.ErrorReason) {
	t.Helper()
	require.Equal(t, code, status.Code(err), "%v", err)
	require.Equal(t, reason, rpcerr.Reason(err), "%v", err)
}

// requireReplay checks that a is the replay of first: the same execution,
// the same result or the same code, message and details.
func requireReplay(t *testing.T, first, a keyedAnswer) {
	t.Helper()
	require.True(t, a.replayed, "x-stage4-replayed: %v", a.err)
	require.Equal(t, first.execID, a.execID)
	if first.err != nil {
		require.True(t, proto.Equal(status.Convert(first.err).Proto(), status.Convert(a.err).Proto()), "%v, want %v", a.err, first.err)
		return
	}
	require.NoError(t, a.err)
	require.True(t, proto.Equal(first.resp, a.resp), "%v, want %v", a.resp, first.resp)
	require.Equal(t, first.execID, a.resp.GetExecutionId())
}

// requireUnknown checks the answer of a retry whose first call's outcome
// is unknown: UNKNOWN, naming the first execution, executing nothing.
func requireUnknown(t *testing.T, a keyedAnswer, firstExecID string) {
	t.Helper()
	requireAnswer(t, a.err, codes.Unknown, rpcerr.OutcomeUnknown)
	require.True(t, a.replayed)
	require.Equal(t, firstExecID, a.execID)
	require.Equal(t, firstExecID, rpcerr.Info(a.err).GetMetadata()["execution_id"])
}

// requireInProgress checks the answer of a retry while the first call
// runs: ABORTED with a RetryInfo, naming the first execution.
func requireInProgress(t *testing.T, a keyedAnswer, firstExecID string) {
	t.Helper()
	requireAnswer(t, a.err, codes.Aborted, rpcerr.RequestInProgress)
	require.False(t, a.replayed)
	require.Equal(t, firstExecID, a.execID)
	require.Equal(t, firstExecID, rpcerr.Info(a.err).GetMetadata()["execution_id"])
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(a.err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	require.NotNil(t, retry, "a google.rpc.RetryInfo")
	require.Positive(t, retry.GetRetryDelay().AsDuration())
}

// startKeyed sends an ExecutePlan with a request_id without waiting for
// its answer, and returns the execution id its header carries.
func startKeyed(ctx context.Context, t *testing.T, conn *grpc.ClientConn, plan *stage4v1.Plan, id string) string {
	t.Helper()
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, stage4v1.Stage4Service_ExecutePlan_FullMethodName)
	require.NoError(t, err)
	require.NoError(t, stream.SendMsg(&stage4v1.ExecutePlanRequest{Plan: plan, RequestId: id}))
	require.NoError(t, stream.CloseSend())
	header, err := stream.Header()
	require.NoError(t, err)
	ids := header.Get(server.HeaderExecutionID)
	require.Len(t, ids, 1)
	return ids[0]
}

// waitStage3Started waits until the reference Stage-3 has logged n
// "started call" lines of calls that carried request id.
func waitStage3Started(t *testing.T, s3 *proc, id string, n int) {
	t.Helper()
	seen := 0
	s3.stderr.waitFor(t, fmt.Sprintf("%d Stage-3 calls with request id %s", n, id), func(line string) bool {
		if isStartedWith(line, id) {
			seen++
		}
		return seen == n
	})
}

func isStartedWith(line, id string) bool {
	return strings.Contains(line, `"msg":"started call"`) && strings.Contains(line, `"stage4.request_id":"`+id+`"`)
}

// stage3StartedWith counts the calls that reached the reference Stage-3
// with request id, by their "started call" lines.
func stage3StartedWith(s3 *proc, id string) int {
	n := 0
	for line := range strings.SplitSeq(s3.stderr.String(), "\n") {
		if isStartedWith(line, id) {
			n++
		}
	}
	return n
}

// settleStage3Log makes every Stage-3 call sent so far show in s3's log:
// it sends a call with a fresh request id and waits for its line, which
// comes after theirs.
func settleStage3Log(t *testing.T, s3 *proc, client stage4v1.Stage4ServiceClient) {
	t.Helper()
	marker := fmt.Sprintf("marker-%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	go callKeyed(ctx, client, testkit.Plan(t), marker) // Stage-3 may hang: the answer does not matter
	s3.stderr.waitForLog(t, "started call", map[string]any{"stage4.request_id": marker})
}

// otherPlan is testkit.Plan with another text: another plan_id.
func otherPlan(t *testing.T) *stage4v1.Plan {
	p := testkit.Plan(t)
	p.Steps[0].Parameters.Fields["text"] = structpb.NewStringValue("other")
	return p
}

// requestIDsTotal reads stage4_request_ids_total of outcome from metrics.
func requestIDsTotal(t *testing.T, metrics, outcome string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^stage4_request_ids_total\{outcome="` + outcome + `"\} (\d+)$`).FindStringSubmatch(metrics)
	require.NotNil(t, m, "no stage4_request_ids_total{outcome=%q}", outcome)
	n, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	return n
}

// TestServeRequestIDOnALogDirectory: the first call executes once and
// records its request_id; its retry is its replay (result, or Stage-3's
// refusal) without Stage-3 or a new execution; the key with another plan
// is refused; an invalid plan does not use the key up; two users' equal
// ids are two keys; Stage-3 receives the id; the metrics count it all.
func TestServeRequestIDOnALogDirectory(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, nil, []string{"--audit-readers", "*"})
	ctx := testContext(t)

	t.Run("first call, then its replay", func(t *testing.T) {
		first := callKeyed(ctx, gw.client, testkit.Plan(t), "0b6c5c1e-3f27-4c8e-9a51-1f0f3d5e9a77")
		require.NoError(t, first.err)
		require.False(t, first.replayed)
		waitStage3Started(t, gw.stage3, "0b6c5c1e-3f27-4c8e-9a51-1f0f3d5e9a77", 1) // Stage-3 got the request id
		calls := stage3Calls(t, gw)
		again := callKeyed(ctx, gw.client, testkit.Plan(t), "0b6c5c1e-3f27-4c8e-9a51-1f0f3d5e9a77")
		requireReplay(t, first, again)
		require.Equal(t, calls, stage3Calls(t, gw), "Stage-3 is not called again")
		res, err := gw.client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{ExecutionId: first.execID})
		require.NoError(t, err)
		require.Len(t, res.GetAuditEvents(), 3, "one execution, no events for the replay")
		require.Equal(t, "0b6c5c1e-3f27-4c8e-9a51-1f0f3d5e9a77", res.GetAuditEvents()[0].GetDetails().GetFields()["request_id"].GetStringValue())
		// The replay has a call log line of its own, where a first
		// success has none at the default level.
		gw.stage4.stderr.waitForLog(t, "finished call", map[string]any{
			"grpc.method": "ExecutePlan", "grpc.code": "OK", "replayed": true, "execution_id": first.execID})
	})

	t.Run("a Stage-3 refusal is replayed", func(t *testing.T) {
		refused := testkit.Plan(t)
		refused.TokenHash = "not-alice-token"
		first := callKeyed(ctx, gw.client, refused, "refused-1")
		requireAnswer(t, first.err, codes.PermissionDenied, rpcerr.Stage3Rejected)
		calls := stage3Calls(t, gw)
		requireReplay(t, first, callKeyed(ctx, gw.client, refused, "refused-1"))
		require.Equal(t, calls, stage3Calls(t, gw))
	})

	t.Run("the key with another plan is refused", func(t *testing.T) {
		first := callKeyed(ctx, gw.client, testkit.Plan(t), "reused-1")
		require.NoError(t, first.err)
		calls := stage3Calls(t, gw)
		other := callKeyed(ctx, gw.client, otherPlan(t), "reused-1")
		requireAnswer(t, other.err, codes.FailedPrecondition, rpcerr.RequestIDReused)
		require.Equal(t, first.execID, other.execID)
		require.Equal(t, first.execID, rpcerr.Info(other.err).GetMetadata()["execution_id"])
		require.Equal(t, calls, stage3Calls(t, gw))
	})

	t.Run("an invalid plan does not use the key up", func(t *testing.T) {
		invalid := testkit.Plan(t)
		invalid.Steps, invalid.DataBindings = nil, nil
		first := callKeyed(ctx, gw.client, invalid, "invalid-1")
		requireAnswer(t, first.err, codes.InvalidArgument, rpcerr.PlanInvalid)
		calls := stage3Calls(t, gw)
		fixed := callKeyed(ctx, gw.client, testkit.Plan(t), "invalid-1")
		require.NoError(t, fixed.err)
		require.False(t, fixed.replayed)
		require.NotEqual(t, first.execID, fixed.execID)
		require.Equal(t, calls+1, stage3Calls(t, gw), "the retry runs, once")
	})

	t.Run("two users with one id", func(t *testing.T) {
		bob := testkit.Plan(t)
		bob.UserId, bob.TokenHash = "bob", "bob-token"
		calls := stage3Calls(t, gw)
		a := callKeyed(ctx, gw.client, testkit.Plan(t), "shared-1")
		require.NoError(t, a.err)
		b := callKeyed(ctx, gw.client, bob, "shared-1")
		require.NoError(t, b.err)
		require.False(t, b.replayed)
		require.NotEqual(t, a.execID, b.execID)
		require.Equal(t, calls+2, stage3Calls(t, gw))
	})

	t.Run("a malformed request_id is refused", func(t *testing.T) {
		a := callKeyed(ctx, gw.client, testkit.Plan(t), "not a valid id")
		requireAnswer(t, a.err, codes.InvalidArgument, rpcerr.PlanInvalid)
		require.Contains(t, status.Convert(a.err).Message(), "request_id")
	})

	metrics := scrape(t, gw.metricsAddr)
	require.Equal(t, 2, requestIDsTotal(t, metrics, "replayed"))
	require.Equal(t, 1, requestIDsTotal(t, metrics, "reused"))
	require.Equal(t, 6, requestIDsTotal(t, metrics, "claimed"))
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, gw.stage4.exitCode(t))
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", gw.auditLog)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
}

// TestServeRequestIDDeadlineThenRetry: a first call whose deadline passes
// while Stage-3 works; its retries are ABORTED while the execution runs,
// then UNKNOWN with the first execution id, and Stage-3 ran the plan once.
func TestServeRequestIDDeadlineThenRetry(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, []string{"--delay", "1s"}, nil)
	ctx := testContext(t)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	first := callKeyed(short, gw.client, testkit.Plan(t), "deadline-1")
	cancel()
	require.Equal(t, codes.DeadlineExceeded, status.Code(first.err), "%v", first.err)
	require.NotEmpty(t, first.execID, "the header came before Stage-3 was called")

	// Retried as a client does: ABORTED until the execution has ended.
	requireUnknown(t, retryKeyed(ctx, t, gw.client, testkit.Plan(t), "deadline-1"), first.execID)
	require.Equal(t, 1, stage3Calls(t, gw), "Stage-3 ran the plan once")
}

// TestServeRequestIDAfterAStop: serve stops while the first call is with
// Stage-3, killed (SIGKILL) or shut down past its grace period; the
// retry is ABORTED while the execution is open, and after the restart,
// which closes it as interrupted, UNKNOWN with the first execution id.
// Stage-3 got the plan once.
func TestServeRequestIDAfterAStop(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		stop func(t *testing.T, gw *stage4Process)
	}{
		{"SIGKILL", func(t *testing.T, gw *stage4Process) {
			require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGKILL))
			gw.stage4.exitCode(t)
		}},
		{"SIGTERM past the grace period", func(t *testing.T, gw *stage4Process) {
			require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
			require.Equal(t, 0, gw.stage4.exitCode(t))
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "audit")
			args := []string{"--shutdown-grace", "500ms"}
			gw := startGatewayOn(t, dir, nil, []string{"--hang"}, args)
			ctx := testContext(t)
			firstID := startKeyed(ctx, t, gw.conn, testkit.Plan(t), "stopped-1")
			waitStage3Started(t, gw.stage3, "stopped-1", 1)
			requireInProgress(t, callKeyed(ctx, gw.client, testkit.Plan(t), "stopped-1"), firstID)
			tt.stop(t, gw)

			restarted := startGatewayOn(t, dir, nil, []string{"--hang"}, args)
			requireUnknown(t, callKeyed(ctx, restarted.client, testkit.Plan(t), "stopped-1"), firstID)
			settleStage3Log(t, restarted.stage3, restarted.client)
			require.Zero(t, stage3StartedWith(restarted.stage3, "stopped-1"), "the restarted gateway did not call Stage-3")
			require.Equal(t, 1, stage3StartedWith(gw.stage3, "stopped-1"))
		})
	}
}

// TestServeRequestIDStage3NotReached: a call that could not reach Stage-3
// (nothing listens at its address) does not use its key up: once Stage-3
// is there, the retry runs.
func TestServeRequestIDStage3NotReached(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s3Addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	s4 := start(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
		"--stage3-addr", s3Addr, "--stage3-insecure", "--audit-log", filepath.Join(t.TempDir(), "audit"))
	addr, _ := s4.servingAddr(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	client := stage4v1.NewStage4ServiceClient(conn)
	ctx := testContext(t)

	first := callKeyed(ctx, client, testkit.Plan(t), "unreached-1")
	requireAnswer(t, first.err, codes.Unavailable, rpcerr.Stage3NotReached)
	s3 := start(t, nil, "reference-stage3", "--listen", s3Addr)
	s3.servingAddr(t)
	retry := retryKeyed(ctx, t, client, testkit.Plan(t), "unreached-1")
	require.NoError(t, retry.err)
	require.False(t, retry.replayed)
	require.NotEqual(t, first.execID, retry.execID)
	waitStage3Started(t, s3, "unreached-1", 1)
}

// TestServeRequestIDKeysByCertificate: a caller with a verified client
// certificate owns its keys by its identity: another certificate's equal
// id is another key, whatever the plan's user.
func TestServeRequestIDKeysByCertificate(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t, "stage4 test CA")
	serverCert, serverKey := ca.Issue(t, "server", x509.ExtKeyUsageServerAuth, "127.0.0.1")
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	s4 := start(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
		"--stage3-addr", s3Addr, "--stage3-insecure", "--audit-log", filepath.Join(t.TempDir(), "audit"),
		"--tls-cert-file", serverCert, "--tls-key-file", serverKey, "--tls-client-ca-file", ca.File)
	addr, _ := s4.servingAddr(t)
	client := func(name, san string) stage4v1.Stage4ServiceClient {
		pair, err := tls.LoadX509KeyPair(ca.Issue(t, name, x509.ExtKeyUsageClientAuth, san))
		require.NoError(t, err)
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		return stage4v1.NewStage4ServiceClient(conn)
	}
	a, b := client("a", "spiffe://stage4.test/ns/apps/sa/a"), client("b", "spiffe://stage4.test/ns/apps/sa/b")
	ctx := testContext(t)
	first := callKeyed(ctx, a, testkit.Plan(t), "cert-1")
	require.NoError(t, first.err)
	other := callKeyed(ctx, b, testkit.Plan(t), "cert-1")
	require.NoError(t, other.err)
	require.False(t, other.replayed, "another caller's key")
	require.NotEqual(t, first.execID, other.execID)
	requireReplay(t, first, callKeyed(ctx, a, testkit.Plan(t), "cert-1"))
	bob := testkit.Plan(t)
	bob.UserId, bob.TokenHash = "bob", "bob-token"
	requireAnswer(t, callKeyed(ctx, a, bob, "cert-1").err, codes.FailedPrecondition, rpcerr.RequestIDReused)
	waitStage3Started(t, s3, "cert-1", 2)
}

// pgReplica is a serve on a PostgreSQL store, with its client and
// metrics.
type pgReplica struct {
	proc        *proc
	conn        *grpc.ClientConn
	client      stage4v1.Stage4ServiceClient
	metricsAddr string
}

func startPGReplica(t *testing.T, stage3Addr, url, name string, args ...string) *pgReplica {
	t.Helper()
	s4 := start(t, nil, append([]string{"serve", "--audit-readers", "*", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--stage3-addr", stage3Addr, "--stage3-insecure", "--audit-log", url, "--replica-name", name}, args...)...)
	addr, metricsAddr := s4.servingAddr(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return &pgReplica{proc: s4, conn: conn, client: stage4v1.NewStage4ServiceClient(conn), metricsAddr: metricsAddr}
}

// stage3CallsOf sums the Stage-3 calls that replicas started, from their
// client metrics (none before a replica's first call).
func stage3CallsOf(t *testing.T, replicas ...*pgReplica) int {
	t.Helper()
	n := 0
	for _, r := range replicas {
		m := regexp.MustCompile(`(?m)^grpc_client_started_total\{[^}]*grpc_method="ExecuteMultiDomainPlan"[^}]*\} (\d+)$`).
			FindStringSubmatch(scrape(t, r.metricsAddr))
		if m != nil {
			c, err := strconv.Atoi(m[1])
			require.NoError(t, err)
			n += c
		}
	}
	return n
}

// TestServeRequestIDConcurrentOnReplicas: duplicates of one call sent at
// once to two replicas of one PostgreSQL store: exactly one reaches
// Stage-3; the others are ABORTED (in progress) or replays; afterwards
// every replica replays the one answer.
func TestServeRequestIDConcurrentOnReplicas(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0", "--delay", "500ms")
	s3Addr, _ := s3.servingAddr(t)
	r1 := startPGReplica(t, s3Addr, url, "r1")
	r2 := startPGReplica(t, s3Addr, url, "r2")
	ctx := testContext(t)

	const perReplica = 8
	answers := make(chan keyedAnswer, 2*perReplica)
	begin := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range []*pgReplica{r1, r2} {
		for range perReplica {
			wg.Go(func() {
				<-begin
				answers <- callKeyed(ctx, r.client, testkit.Plan(t), "race-1")
			})
		}
	}
	close(begin)
	wg.Wait()
	close(answers)
	var winner keyedAnswer
	executed, aborted := 0, 0
	var all []keyedAnswer
	for a := range answers {
		all = append(all, a)
		switch {
		case a.err == nil && !a.replayed:
			executed++
			winner = a
		case status.Code(a.err) == codes.Aborted:
			requireAnswer(t, a.err, codes.Aborted, rpcerr.RequestInProgress)
			aborted++
		default:
			require.NoError(t, a.err)
			require.True(t, a.replayed)
		}
	}
	require.Equal(t, 1, executed, "exactly one call executes")
	t.Logf("%d calls: 1 executed, %d in progress, %d replays", len(all), aborted, len(all)-1-aborted)
	for _, a := range all {
		require.Equal(t, winner.execID, a.execID, "every answer names the one execution")
	}
	for _, r := range []*pgReplica{r1, r2} {
		requireReplay(t, winner, retryKeyed(ctx, t, r.client, testkit.Plan(t), "race-1"))
	}
	require.Equal(t, 1, stage3CallsOf(t, r1, r2), "exactly one Stage-3 call")
	waitStage3Started(t, s3, "race-1", 1)
}

// TestServeRequestIDReplicaKilled: the replica running the first call is
// killed (SIGKILL); another replica answers its retries ABORTED while the
// execution is open, and UNKNOWN with the first execution id once the
// restarted replica has closed it as interrupted. Stage-3 got the plan
// once.
func TestServeRequestIDReplicaKilled(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0", "--hang")
	s3Addr, _ := s3.servingAddr(t)
	r1 := startPGReplica(t, s3Addr, url, "r1")
	r2 := startPGReplica(t, s3Addr, url, "r2")
	ctx := testContext(t)

	firstID := startKeyed(ctx, t, r1.conn, testkit.Plan(t), "killed-1")
	waitStage3Started(t, s3, "killed-1", 1)
	requireInProgress(t, callKeyed(ctx, r2.client, testkit.Plan(t), "killed-1"), firstID)
	require.NoError(t, r1.proc.cmd.Process.Signal(syscall.SIGKILL))
	r1.proc.exitCode(t)
	requireInProgress(t, callKeyed(ctx, r2.client, testkit.Plan(t), "killed-1"), firstID)

	waitNameLockReleased(t, url)
	restarted := startPGReplica(t, s3Addr, url, "r1")
	restarted.proc.stderr.waitForLog(t, "closed executions left open by a stopped Stage-4 process", nil)
	requireUnknown(t, callKeyed(ctx, r2.client, testkit.Plan(t), "killed-1"), firstID)
	requireUnknown(t, callKeyed(ctx, restarted.client, testkit.Plan(t), "killed-1"), firstID)
	settleStage3Log(t, s3, r2.client)
	require.Equal(t, 1, stage3StartedWith(s3, "killed-1"), "Stage-3 got the plan once")
}

// waitNameLockReleased waits until the database has noticed that the
// killed replica's sessions are gone, with the advisory lock on its
// replica name: only the surviving replica's lock is left.
func waitNameLockReleased(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testContext(t), 20*time.Second)
	defer cancel()
	for {
		var n int
		err := queryRow(ctx, url, `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND a.datname = current_database()`, &n)
		require.NoError(t, err)
		if n <= 1 { // r2's own name lock
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the killed replica's name lock is still held")
		case <-time.After(20 * time.Millisecond): // polling the server's view, with a deadline
		}
	}
}

// TestServeRequestIDAuditUnavailable: a call refused because the audit
// store cannot be reached does not use its key up: once the database is
// back, the retry runs.
func TestServeRequestIDAuditUnavailable(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	proxy := pgtest.NewProxy(t, url)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	r := startPGReplica(t, s3Addr, proxy.URL(url), "r1")
	ctx := testContext(t)
	watch, err := healthpb.NewHealthClient(r.conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: "stage4.v1.Stage4Service"})
	require.NoError(t, err)
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_SERVING, answerBound)

	proxy.Refuse(true)
	proxy.CutAll()
	first := callKeyed(ctx, r.client, testkit.Plan(t), "outage-1")
	requireAnswer(t, first.err, codes.Unavailable, rpcerr.AuditUnavailable)
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_NOT_SERVING, answerBound)
	requireAnswer(t, callKeyed(ctx, r.client, testkit.Plan(t), "outage-1").err, codes.Unavailable, rpcerr.AuditUnavailable)
	proxy.Refuse(false)
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_SERVING, answerBound)
	retry := retryKeyed(ctx, t, r.client, testkit.Plan(t), "outage-1")
	require.NoError(t, retry.err)
	require.False(t, retry.replayed)
	waitStage3Started(t, s3, "outage-1", 1)
	require.Equal(t, 1, stage3CallsOf(t, r))
}

// TestServeRequestIDRetention: a key older than the retention is
// forgotten (its call runs again) and purged: here the rows are made a
// day older behind the server's back, rather than the test waiting an
// hour, the shortest retention serve takes.
func TestServeRequestIDRetention(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	r := startPGReplica(t, s3Addr, url, "r1", "--idempotency-retention", "1h")
	ctx := testContext(t)

	first := callKeyed(ctx, r.client, testkit.Plan(t), "old-1")
	require.NoError(t, first.err)
	requireReplay(t, first, callKeyed(ctx, r.client, testkit.Plan(t), "old-1"))
	pgtest.Exec(t, url, "UPDATE audit_requests SET claimed_at = claimed_at - interval '61 minutes'")
	again := callKeyed(ctx, r.client, testkit.Plan(t), "old-1")
	require.NoError(t, again.err)
	require.False(t, again.replayed, "the key was forgotten")
	require.NotEqual(t, first.execID, again.execID)
	require.Equal(t, 2, stage3CallsOf(t, r))

	// Purged at the next start (and every ten minutes).
	pgtest.Exec(t, url, "UPDATE audit_requests SET claimed_at = claimed_at - interval '61 minutes'")
	require.NoError(t, r.proc.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, r.proc.exitCode(t))
	startPGReplica(t, s3Addr, url, "r1", "--idempotency-retention", "1h")
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		var n int
		require.NoError(t, queryRow(pctx, url, "SELECT count(*) FROM audit_requests", &n))
		if n == 0 {
			break
		}
		select {
		case <-pctx.Done():
			t.Fatal("the expired key was not purged")
		case <-time.After(20 * time.Millisecond): // polling the table, with a deadline
		}
	}
}

// queryRow scans the one row of q on the database at url into dst.
func queryRow(ctx context.Context, url, q string, dst ...any) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, q).Scan(dst...)
}

// TestServeIdempotencyRetentionFlag: serve refuses a retention under an
// hour.
func TestServeIdempotencyRetentionFlag(t *testing.T) {
	t.Parallel()
	code, _, stderr := runStage4(t, nil, "serve", "--stage3-addr", "127.0.0.1:1", "--idempotency-retention", "30m")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--idempotency-retention is 30m0s; it must be at least 1h0m0s")
}

// TestServeRequestIDAfterAMachineCrash runs serve on a file system that
// loses every write no sync covered (faultfs): a call with a request_id
// finishes; the machine crashes before the request journal's background
// sync (syncs hang, serve is killed, the unsynced writes are lost). After
// the restart, the retry gets the first answer or, its journal entry
// lost, UNKNOWN found from the log's PLAN_RECEIVED: never a second
// execution.
func TestServeRequestIDAfterAMachineCrash(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	dir := filepath.Join(fsys.Dir(), "audit")
	gw := startGatewayOn(t, dir, nil, nil, nil)
	ctx := testContext(t)
	first := callKeyed(ctx, gw.client, testkit.Plan(t), "crash-1")
	require.NoError(t, first.err)
	fsys.HangSyncs()
	require.NoError(t, fsys.WaitHungSyncs(ctx, 1))
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGKILL))
	gw.stage4.exitCode(t)
	fsys.Crash()

	restarted := startGatewayOn(t, dir, nil, nil, nil)
	retry := callKeyed(ctx, restarted.client, testkit.Plan(t), "crash-1")
	if retry.err == nil {
		t.Log("the journal entry survived: the retry is the replay")
		requireReplay(t, first, retry)
	} else {
		t.Log("the journal entry was lost: the retry is told the outcome is unknown")
		requireUnknown(t, retry, first.execID)
	}
	settleStage3Log(t, restarted.stage3, restarted.client)
	require.Zero(t, stage3StartedWith(restarted.stage3, "crash-1"), "the plan did not run again")
}
