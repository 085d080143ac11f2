package inflight_test

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/stage4/stage4/internal/inflight"
)

// fakeRequest is an inflight.Request whose declared length, wholeness and
// connection the client names in metadata (x-length, x-whole, x-conn).
type fakeRequest struct {
	length uint32
	whole  bool
	conn   string
	pauses *atomic.Int64
}

func (r fakeRequest) Wait(context.Context) (uint32, bool, bool, error) {
	return r.length, false, r.whole, nil
}
func (r fakeRequest) Conn() any             { return r.conn }
func (r fakeRequest) PauseReadTimeout()     { r.pauses.Add(1) }
func (r fakeRequest) ResumeReadTimeout()    { r.pauses.Add(-1) }
func (r fakeRequest) ReadTimeoutErr() error { return nil }

// holdService holds every call before it reads its request, so that a
// call whose request has not arrived whole stays a reading call, until
// the test finishes it by its name.
type holdService struct {
	arrived  chan string // the call's x-name
	releases sync.Map    // x-name to a chan struct{}, closed to finish the call
}

// release is the channel that finishes the call name.
func (s *holdService) release(name string) chan struct{} {
	ch, _ := s.releases.LoadOrStore(name, make(chan struct{}))
	return ch.(chan struct{})
}

var holdDesc = grpc.ServiceDesc{
	ServiceName: "inflight.test.Hold",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{MethodName: "Hold", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		svc := srv.(*holdService)
		md, _ := metadata.FromIncomingContext(ctx)
		name := md.Get("x-name")[0]
		svc.arrived <- name
		select {
		case <-svc.release(name):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		req := &wrapperspb.BytesValue{}
		if err := dec(req); err != nil {
			return nil, err
		}
		return req, nil
	}}},
}

// shareHarness is holdService behind a Limiter that takes each call's
// Request from its metadata.
type shareHarness struct {
	svc    *holdService
	conn   *grpc.ClientConn
	reg    *prometheus.Registry
	pauses atomic.Int64
	errs   chan error
}

func newShareHarness(t *testing.T, budget int64) *shareHarness {
	t.Helper()
	h := &shareHarness{svc: &holdService{arrived: make(chan string, 100)}, reg: prometheus.NewRegistry(), errs: make(chan error, 100)}
	l, err := inflight.New(budget, maxRequest, inflight.WithRegisterer(h.reg), inflight.WithRequests(func(ctx context.Context) (inflight.Request, bool) {
		md, _ := metadata.FromIncomingContext(ctx)
		length, err := strconv.Atoi(md.Get("x-length")[0])
		if err != nil {
			return nil, false
		}
		return fakeRequest{length: uint32(length), whole: md.Get("x-whole")[0] == "true", conn: md.Get("x-conn")[0], pauses: &h.pauses}, true
	}))
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxRequest))
	l.Registrar(srv).RegisterService(&holdDesc, h.svc)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	h.conn, err = grpc.NewClient("passthrough:///bufnet", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.conn.Close() })
	return h
}

// call starts a call named name, from connection conn, whose request
// declares length bytes and has or has not arrived whole.
func (h *shareHarness) call(name, conn string, length int, whole bool) {
	ctx := metadata.AppendToOutgoingContext(context.Background(),
		"x-name", name, "x-conn", conn, "x-length", strconv.Itoa(length), "x-whole", strconv.FormatBool(whole))
	go func() {
		h.errs <- h.conn.Invoke(ctx, "/inflight.test.Hold/Hold", wrapperspb.Bytes(make([]byte, 10)), &wrapperspb.BytesValue{})
	}()
}

// arrivals returns the names of the next n calls to reach the handler.
func (h *shareHarness) arrivals(t *testing.T, n int) []string {
	t.Helper()
	var names []string
	for range n {
		select {
		case name := <-h.svc.arrived:
			names = append(names, name)
		case <-time.After(30 * time.Second):
			t.Fatalf("only %v reached the handler", names)
		}
	}
	return names
}

// waiting waits until n calls in all have waited for the budget, and
// checks that none reached the handler.
func (h *shareHarness) waiting(t *testing.T, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return metricOf(t, h.reg, "stage4_inflight_waits_total") == float64(n) }, 30*time.Second, time.Millisecond)
	select {
	case name := <-h.svc.arrived:
		t.Fatalf("%s reached the handler over the budget", name)
	default:
	}
}

// finish ends the calls names.
func (h *shareHarness) finish(names ...string) {
	for _, n := range names {
		close(h.svc.release(n))
	}
}

// held waits until the calls hold n bytes.
func (h *shareHarness) held(t *testing.T, n int64) {
	t.Helper()
	require.Eventually(t, func() bool { return metricOf(t, h.reg, "stage4_inflight_request_bytes") == float64(n) }, 30*time.Second, time.Millisecond)
}

func metricOf(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestReservesByDeclaredLength: a call reserves 16 times its request's
// declared length, so small calls do not queue for a budget of two large
// requests.
func TestReservesByDeclaredLength(t *testing.T) {
	t.Parallel()
	h := newShareHarness(t, 2*maxRequest)
	const calls = 20
	for i := range calls {
		h.call(strconv.Itoa(i), "a", 100, true)
	}
	names := h.arrivals(t, calls)
	require.InDelta(t, calls*inflight.DecodedBytesPerByte*100, metricOf(t, h.reg, "stage4_inflight_request_bytes"), 0)
	h.finish(names...)
	for range calls {
		require.NoError(t, <-h.errs)
	}
	require.Zero(t, metricOf(t, h.reg, "stage4_inflight_request_bytes"))
}

// TestReadingCallsLeaveRoom: calls still reading large requests hold at
// most the budget less one largest request, so requests that have arrived
// find room; the reading calls' read timeout pauses while they wait.
func TestReadingCallsLeaveRoom(t *testing.T) {
	t.Parallel()
	h := newShareHarness(t, 4*maxRequest)
	for _, c := range []string{"a", "b", "c", "d"} {
		h.call(c, c, maxRequest, false)
	}
	reading := h.arrivals(t, 3)
	h.waiting(t, 1)
	require.Equal(t, int64(1), h.pauses.Load(), "the waiting call's read timeout is paused")

	h.call("arrived", "e", maxRequest, true)
	require.Equal(t, []string{"arrived"}, h.arrivals(t, 1), "a request that has arrived finds room")

	h.finish(reading[0]) // a reading call ends: the waiting one reads
	last := h.arrivals(t, 1)
	require.NotContains(t, reading, last[0])
	require.Zero(t, h.pauses.Load())
	h.finish(append(reading[1:], "arrived", last[0])...)
	for range 5 {
		require.NoError(t, <-h.errs)
	}
}

// TestConnectionsShareTheBudget: a connection that holds more than its
// fair share (the budget over the connections with calls) waits behind a
// connection that holds nothing, even one that came later.
func TestConnectionsShareTheBudget(t *testing.T) {
	t.Parallel()
	h := newShareHarness(t, 4*maxRequest)
	for i := range 4 {
		h.call("a"+strconv.Itoa(i), "a", maxRequest, true)
	}
	h.arrivals(t, 4) // alone, a may take the whole budget
	h.call("a4", "a", maxRequest, true)
	h.waiting(t, 1)
	h.call("b0", "b", maxRequest, true)
	h.waiting(t, 2)

	h.finish("a0") // a holds 3 of 4; with b waiting its share is 2
	require.Equal(t, []string{"b0"}, h.arrivals(t, 1), "b, holding nothing, goes first")
	h.finish("a1") // a holds 2: one more would be over its share
	h.held(t, 3*maxRequest)
	h.waiting(t, 2)
	h.finish("a2")
	require.Equal(t, []string{"a4"}, h.arrivals(t, 1))
	h.finish("a3", "a4", "b0")
	for range 6 {
		require.NoError(t, <-h.errs)
	}
	h.held(t, 0)
}
