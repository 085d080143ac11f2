package inflight_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/inflight"
)

// maxRequest is the largest request of the tests' servers.
const maxRequest = 64 << 10

// blocking holds every ValidatePlan call until the test releases it, and
// reports each arrival.
type blocking struct {
	stage4v1.UnimplementedStage4ServiceServer
	arrived chan struct{}
	release chan struct{}
}

func (b *blocking) ValidatePlan(ctx context.Context, _ *stage4v1.ValidatePlanRequest) (*stage4v1.ValidatePlanResponse, error) {
	b.arrived <- struct{}{}
	select {
	case <-b.release:
		return &stage4v1.ValidatePlanResponse{}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// harness is the blocking service behind a Limiter over bufconn.
type harness struct {
	svc    *blocking
	client stage4v1.Stage4ServiceClient
	reg    *prometheus.Registry
	bursts atomic.Int64
}

func newHarness(t *testing.T, budget int64) *harness {
	t.Helper()
	h := &harness{svc: &blocking{arrived: make(chan struct{}, 100), release: make(chan struct{})}, reg: prometheus.NewRegistry()}
	l, err := inflight.New(budget, maxRequest, inflight.WithRegisterer(h.reg), inflight.WithAfterBurst(func() { h.bursts.Add(1) }))
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxRequest))
	stage4v1.RegisterStage4ServiceServer(l.Registrar(srv), h.svc)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	h.client = stage4v1.NewStage4ServiceClient(conn)
	return h
}

// request is a ValidatePlanRequest of about n bytes.
func request(n int) *stage4v1.ValidatePlanRequest {
	return &stage4v1.ValidatePlanRequest{Plan: &stage4v1.Plan{UserId: strings.Repeat("u", n)}}
}

// metric returns the value of a gauge or the sum of a counter's series.
func (h *harness) metric(t *testing.T, name string) float64 {
	t.Helper()
	families, err := h.reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return sum
}

// waitArrivals waits until n calls have reached the handler.
func (h *harness) waitArrivals(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-h.svc.arrived:
		case <-time.After(30 * time.Second):
			t.Fatal("a call did not reach the handler")
		}
	}
}

// TestLargeRequestsQueueForTheBudget: with room for two large requests,
// a third waits before its request is read and runs once one ends; the
// budget is whole again when all have ended.
func TestLargeRequestsQueueForTheBudget(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2*maxRequest)
	// 8 KiB requests keep their whole reservation: 16 x 8 KiB is
	// more than the largest request.
	errs := make(chan error, 3)
	call := func() {
		_, err := h.client.ValidatePlan(context.Background(), request(8<<10))
		errs <- err
	}
	go call()
	go call()
	h.waitArrivals(t, 2)
	require.InDelta(t, 2*maxRequest, h.metric(t, "stage4_inflight_request_bytes"), 0)

	go call()
	require.Eventually(t, func() bool { return h.metric(t, "stage4_inflight_waits_total") == 1 }, 30*time.Second, time.Millisecond,
		"the third call waits for the budget")
	select {
	case <-h.svc.arrived:
		t.Fatal("a third large request was let in over the budget")
	default:
	}

	h.svc.release <- struct{}{} // one call ends; the waiting one goes in
	h.waitArrivals(t, 1)
	h.svc.release <- struct{}{}
	h.svc.release <- struct{}{}
	for range 3 {
		require.NoError(t, <-errs)
	}
	require.Zero(t, h.metric(t, "stage4_inflight_request_bytes"))
	require.Equal(t, int64(1), h.bursts.Load(), "one burst ended")
}

// TestSmallRequestsDoNotQueue: once decoded, a small request keeps only
// 16 times its size, so many of them are handled at once in a budget of
// two large ones (each call needs the room of one large request only
// while its request is read).
func TestSmallRequestsDoNotQueue(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2*maxRequest)
	const calls = 20
	errs := make(chan error, calls)
	for range calls {
		go func() {
			_, err := h.client.ValidatePlan(context.Background(), request(100))
			errs <- err
		}()
	}
	h.waitArrivals(t, calls)
	held := h.metric(t, "stage4_inflight_request_bytes")
	require.Positive(t, held)
	require.Less(t, held, float64(calls*16*120))
	for range calls {
		h.svc.release <- struct{}{}
	}
	for range calls {
		require.NoError(t, <-errs)
	}
	require.Zero(t, h.metric(t, "stage4_inflight_request_bytes"))
	require.Zero(t, h.bursts.Load(), "small requests make no burst")
}

// TestWaitEndsWithTheCallersDeadline: a call that cannot get its share
// before its deadline ends without its request being read or handled.
func TestWaitEndsWithTheCallersDeadline(t *testing.T) {
	t.Parallel()
	h := newHarness(t, maxRequest)
	errs := make(chan error, 1)
	go func() {
		_, err := h.client.ValidatePlan(context.Background(), request(8<<10))
		errs <- err
	}()
	h.waitArrivals(t, 1)

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := h.client.ValidatePlan(ctx, request(8<<10))
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
	select {
	case <-h.svc.arrived:
		t.Fatal("the call that timed out reached the handler")
	default:
	}
	h.svc.release <- struct{}{}
	require.NoError(t, <-errs)
	require.Eventually(t, func() bool { return h.metric(t, "stage4_inflight_request_bytes") == 0 }, 30*time.Second, time.Millisecond)
}

func TestNewRefusesABudgetBelowOneRequest(t *testing.T) {
	t.Parallel()
	_, err := inflight.New(maxRequest-1, maxRequest)
	require.ErrorContains(t, err, "must be at least the largest request")
}
