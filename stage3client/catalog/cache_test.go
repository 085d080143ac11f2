package catalog_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/catalog"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// stage3 is the reference Stage-3 whose DescribeMethods a test can make
// fail or answer otherwise.
type stage3 struct {
	*stage3ref.Service

	mu   sync.Mutex
	err  error
	resp *stage3v1.DescribeMethodsResponse
}

func (s *stage3) DescribeMethods(ctx context.Context, req *stage3v1.DescribeMethodsRequest) (*stage3v1.DescribeMethodsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	if s.resp != nil {
		return s.resp, nil
	}
	return s.Service.DescribeMethods(ctx, req)
}

// set makes DescribeMethods fail with err, or answer resp (the
// reference's catalogue when nil).
func (s *stage3) set(err error, resp *stage3v1.DescribeMethodsResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err, s.resp = err, resp
}

// serve serves a Stage-3 service description over bufconn and returns
// the real Stage-3 client of Stage-4 connected to it.
func serve(t *testing.T, desc *grpc.ServiceDesc, impl any) *stage3client.Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	srv.RegisterService(desc, impl)
	go func() { _ = srv.Serve(lis) }() // Stop ends it.
	t.Cleanup(srv.Stop)
	c, err := stage3client.New(stage3client.Config{Target: "passthrough:///bufnet", Insecure: true},
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })
	return c
}

// withoutDescribe is Stage3Service as a Stage-3 built before
// DescribeMethods existed serves it: gRPC itself answers UNIMPLEMENTED.
func withoutDescribe() *grpc.ServiceDesc {
	desc := stage3v1.Stage3Service_ServiceDesc
	desc.Methods = nil
	for _, m := range stage3v1.Stage3Service_ServiceDesc.Methods {
		if m.MethodName != "DescribeMethods" {
			desc.Methods = append(desc.Methods, m)
		}
	}
	return &desc
}

// newCache is a Cache of d with its metrics in a registry of their own
// and its log in a buffer.
func newCache(t *testing.T, d catalog.Describer, opts ...catalog.Option) (*catalog.Cache, *prometheus.Registry, *syncBuffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	logs := &syncBuffer{}
	c, err := catalog.New(d, append([]catalog.Option{
		catalog.WithRegisterer(reg),
		catalog.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
	}, opts...)...)
	require.NoError(t, err)
	return c, reg, logs
}

// syncBuffer is a bytes.Buffer that a logger and a test share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count is how many log lines contain s.
func (b *syncBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// requireState checks a Cache's snapshot and the metrics that show it.
func requireState(t *testing.T, c *catalog.Cache, reg *prometheus.Registry, want catalog.Status, methods int) *catalog.Snapshot {
	t.Helper()
	s := c.Snapshot()
	require.Equal(t, want, s.Status, "error: %v", s.Err)
	require.Equal(t, want == catalog.StatusCurrent || want == catalog.StatusStale, s.Catalog != nil)
	gauge := func(name string, labels ...string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				if len(labels) == 0 || m.GetLabel()[0].GetValue() == labels[0] {
					return m.GetGauge().GetValue()
				}
			}
		}
		t.Fatalf("no metric %s%v", name, labels)
		return 0
	}
	require.Equal(t, 1.0, gauge("stage4_stage3_catalog_state", want.String()))
	require.Equal(t, float64(methods), gauge("stage4_stage3_catalog_methods"))
	if s.Catalog != nil {
		require.Equal(t, float64(methods), float64(s.Catalog.Methods()))
		require.InDelta(t, float64(s.FetchTime.UnixNano())/1e9, gauge("stage4_stage3_catalog_last_success_timestamp_seconds"), 1e-3)
	} else {
		require.Zero(t, gauge("stage4_stage3_catalog_last_success_timestamp_seconds"))
	}
	return s
}

func refreshes(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "stage4_stage3_catalog_refreshes_total" {
			for _, m := range mf.GetMetric() {
				out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// TestCacheFollowsStage3 walks a Cache through every state against the
// reference Stage-3 over real gRPC.
func TestCacheFollowsStage3(t *testing.T) {
	t.Parallel()
	s3 := &stage3{Service: stage3ref.NewService()}
	c, reg, logs := newCache(t, serve(t, &stage3v1.Stage3Service_ServiceDesc, s3))
	ctx := t.Context()
	requireState(t, c, reg, catalog.StatusUnavailable, 0)
	require.True(t, c.Snapshot().AttemptTime.IsZero())

	// The first answer.
	require.NoError(t, c.Refresh(ctx))
	first := requireState(t, c, reg, catalog.StatusCurrent, 10)
	require.NotNil(t, first.Catalog.Lookup("text", "upper"))
	require.Equal(t, first.AttemptTime, first.FetchTime)
	require.Equal(t, 1, logs.count("stage3 catalog fetched"))

	// Failed refreshes keep it, and are logged once as WARN.
	s3.set(status.Error(codes.Unavailable, "down for maintenance"), nil)
	for range 2 {
		require.ErrorContains(t, c.Refresh(ctx), "down for maintenance")
		stale := requireState(t, c, reg, catalog.StatusStale, 10)
		require.Same(t, first.Catalog, stale.Catalog)
		require.Equal(t, first.FetchTime, stale.FetchTime)
		require.True(t, stale.AttemptTime.After(first.AttemptTime))
		require.ErrorContains(t, stale.Err, "down for maintenance")
	}
	require.Equal(t, 1, logs.count("level=WARN msg=\"stage3 catalog refresh failed; plans are checked against the catalog fetched before\""))
	require.Equal(t, 1, logs.count("level=DEBUG msg=\"stage3 catalog refresh failed"))

	// An answer that breaks the limits is a failed refresh too.
	s3.set(nil, describe(t, `{"domains":[{"name":"Bad"}]}`))
	require.ErrorIs(t, c.Refresh(ctx), catalog.ErrInvalid)
	requireState(t, c, reg, catalog.StatusStale, 10)

	// Back: the same answer is not compiled again.
	s3.set(nil, nil)
	require.NoError(t, c.Refresh(ctx))
	again := requireState(t, c, reg, catalog.StatusCurrent, 10)
	require.Same(t, first.Catalog, again.Catalog)
	require.True(t, again.FetchTime.After(first.FetchTime))

	// A new answer replaces it.
	s3.set(nil, describe(t, `{"domains":[{"name":"text","methods":[{"name":"upper"}]}]}`))
	require.NoError(t, c.Refresh(ctx))
	changed := requireState(t, c, reg, catalog.StatusCurrent, 1)
	require.Nil(t, changed.Catalog.Lookup("text", "lower"))

	// UNIMPLEMENTED drops it: Stage-3 no longer describes itself.
	s3.set(status.Error(codes.Unimplemented, "gone"), nil)
	require.NoError(t, c.Refresh(ctx))
	gone := requireState(t, c, reg, catalog.StatusNotOffered, 0)
	require.NoError(t, gone.Err)
	require.Equal(t, 1, logs.count("stage3 does not offer DescribeMethods"))

	// A failure without a catalogue leaves none.
	s3.set(nil, describe(t, `{"domains":[{"name":"Bad"}]}`))
	require.ErrorIs(t, c.Refresh(ctx), catalog.ErrInvalid)
	requireState(t, c, reg, catalog.StatusUnavailable, 0)

	require.Equal(t, map[string]float64{"ok": 3, "not_offered": 1, "failed": 4}, refreshes(t, reg))
}

func TestCacheWithAStage3WithoutDescribeMethods(t *testing.T) {
	t.Parallel()
	c, reg, _ := newCache(t, serve(t, withoutDescribe(), stage3ref.NewService()))
	require.NoError(t, c.Refresh(t.Context()))
	requireState(t, c, reg, catalog.StatusNotOffered, 0)
	require.Equal(t, map[string]float64{"ok": 0, "not_offered": 1, "failed": 0}, refreshes(t, reg))
}

func TestCacheWithAStage3NotReached(t *testing.T) {
	t.Parallel()
	// A listener that is closed at once: every connection attempt fails.
	lis := bufconn.Listen(1 << 10)
	require.NoError(t, lis.Close())
	client, err := stage3client.New(stage3client.Config{Target: "passthrough:///bufnet", Insecure: true},
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, client.Close()) })
	c, reg, logs := newCache(t, client, catalog.WithFetchTimeout(time.Second))
	err = c.Refresh(t.Context())
	require.Equal(t, codes.Unavailable, status.Code(err), "error: %v", err)
	s := requireState(t, c, reg, catalog.StatusUnavailable, 0)
	require.Error(t, s.Err)
	require.False(t, s.AttemptTime.IsZero())
	require.Equal(t, 1, logs.count("plans are not checked against a catalog until one is fetched"))
}

// TestCacheRunRefreshes: Run picks up a changed catalogue on its own and
// ends with its context.
func TestCacheRunRefreshes(t *testing.T) {
	t.Parallel()
	s3 := &stage3{Service: stage3ref.NewService()}
	c, _, _ := newCache(t, serve(t, &stage3v1.Stage3Service_ServiceDesc, s3))
	require.NoError(t, c.Refresh(t.Context()))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx, 10*time.Millisecond)
	}()
	s3.set(nil, describe(t, `{"domains":[{"name":"text","methods":[{"name":"upper"}]}]}`))
	require.Eventually(t, func() bool { return c.Snapshot().Catalog.Methods() == 1 }, 10*time.Second, 5*time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
}

func TestNewRefusesMetricsRegisteredTwice(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	_, err := catalog.New(nil, catalog.WithRegisterer(reg))
	require.NoError(t, err)
	_, err = catalog.New(nil, catalog.WithRegisterer(reg))
	require.ErrorContains(t, err, "register catalog metrics")
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP stage4_stage3_catalog_methods Methods in the catalog that plans are checked against; 0 when there is none.
# TYPE stage4_stage3_catalog_methods gauge
stage4_stage3_catalog_methods 0
`), "stage4_stage3_catalog_methods"))
}
