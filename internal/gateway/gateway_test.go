package gateway_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// failingWrite is a segment of an audit log directory whose writes fail
// once fail is set, as a disk that stopped accepting writes would. (The
// store syncs appends with fdatasync on the file descriptor, past any
// wrapper's Sync, so the write is where a fault is injected.)
type failingWrite struct {
	segstore.File
	fail *atomic.Bool
}

func (f *failingWrite) WriteAt(p []byte, off int64) (int, error) {
	if f.fail.Load() {
		return 0, errors.New("injected write failure")
	}
	return f.File.WriteAt(p, off)
}

// startFailableGateway runs a gateway in front of a reference Stage-3 on
// an audit log directory whose writes fail once the returned flag is set.
func startFailableGateway(t *testing.T, logger *slog.Logger) (*runningGateway, *stage3ref.Server, *atomic.Bool) {
	t.Helper()
	ref, err := stage3ref.NewServer(stage3ref.NewService())
	require.NoError(t, err)
	t.Cleanup(func() { _ = ref.Close() })
	fail := new(atomic.Bool)
	store, err := segstore.Open(filepath.Join(t.TempDir(), "audit"), segstore.WithFileWrapper(func(f segstore.File) segstore.File {
		return &failingWrite{File: f, fail: fail}
	}))
	require.NoError(t, err)
	gw := startGatewayLogging(t, gateway.Config{Stage3: stage3client.Config{Target: ref.Addr, Insecure: true}, Store: store}, logger)
	return gw, ref, fail
}

// TestGatewayAuditFailureTurnsHealthNotServing checks the wiring that the
// binary cannot show from outside: when the audit log fails, the plan is
// refused and health reports NOT_SERVING, overall and for the service.
func TestGatewayAuditFailureTurnsHealthNotServing(t *testing.T) {
	t.Parallel()
	gw, ref, fail := startFailableGateway(t, slog.New(slog.DiscardHandler))
	addrs := gw.addrs

	conn, err := grpc.NewClient(addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	callCtx := testContext(t)
	res, err := hc.Check(callCtx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, res.GetStatus())

	fail.Store(true)
	_, err = stage4v1.NewStage4ServiceClient(conn).ExecutePlan(callCtx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.Error(t, err)
	require.Zero(t, ref.Service.Calls(), "nothing unaudited reaches Stage-3")
	for _, svc := range []string{"", "stage4.v1.Stage4Service"} {
		res, err := hc.Check(callCtx, &healthpb.HealthCheckRequest{Service: svc})
		require.NoError(t, err)
		require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, res.GetStatus(), "service %q", svc)
	}
	res, err = hc.Check(callCtx, &healthpb.HealthCheckRequest{Service: gateway.LivenessService})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, res.GetStatus(), "liveness follows the process, not the store")

	gw.stop() // the failed log may make shutdown report an error; the status is what matters here
}

// syncBuffer is a log destination that tests read while the gateway
// writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) lines() []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(b.buf.Bytes()), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(l, &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// TestRefusedCallsAreLoggedRateLimited: while the audit store is down,
// every ExecutePlan is refused, but the call log gets one line per method
// and code a second with a count of the ones left out, not one per call.
func TestRefusedCallsAreLoggedRateLimited(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	gw, _, fail := startFailableGateway(t, slog.New(slog.NewJSONHandler(&logs, nil)))
	conn, err := grpc.NewClient(gw.addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	client := stage4v1.NewStage4ServiceClient(conn)
	ctx := testContext(t)

	fail.Store(true)
	const calls = 200
	for range calls {
		_, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.Equal(t, codes.Unavailable, status.Code(err))
	}
	_ = gw.stop() // a failed log may make shutdown report an error; the log lines are what matter here
	var refused int
	for _, l := range logs.lines() {
		if l["msg"] == "finished call" && l["grpc.code"] == "Unavailable" {
			refused++
		}
	}
	require.GreaterOrEqual(t, refused, 1, "the refusals are in the log")
	require.Less(t, refused, calls/10, "but not one line per refused call")
}
