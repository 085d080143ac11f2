package readlimit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/readlimit"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
)

// reader is a Stage4Service whose ListAuditEvents runs until the test
// lets it end, and whose ValidatePlan answers at once.
type reader struct {
	stage4v1.UnimplementedStage4ServiceServer
	entered chan struct{}
	release chan struct{}
}

func (r *reader) ListAuditEvents(ctx context.Context, _ *stage4v1.ListAuditEventsRequest) (*stage4v1.ListAuditEventsResponse, error) {
	r.entered <- struct{}{}
	select {
	case <-r.release:
	case <-ctx.Done():
	}
	return &stage4v1.ListAuditEventsResponse{}, nil
}

func (r *reader) ValidatePlan(context.Context, *stage4v1.ValidatePlanRequest) (*stage4v1.ValidatePlanResponse, error) {
	return &stage4v1.ValidatePlanResponse{}, nil
}

// serve runs a reader behind a Limiter on a bufconn server.
func serve(t *testing.T, l *readlimit.Limiter) (stage4v1.Stage4ServiceClient, *reader) {
	t.Helper()
	r := &reader{entered: make(chan struct{}, 16), release: make(chan struct{})}
	srv := grpc.NewServer(grpc.UnaryInterceptor(l.UnaryServerInterceptor(authz.AuditReadMethods)))
	stage4v1.RegisterStage4ServiceServer(srv, r)
	conn := testkit.Serve(t, srv)
	return stage4v1.NewStage4ServiceClient(conn), r
}

// list calls ListAuditEvents with timeout and sends its error to done.
func list(c stage4v1.Stage4ServiceClient, timeout time.Duration, done chan<- error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := c.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{})
	done <- err
}

func TestReadsTakeTurns(t *testing.T) {
	t.Parallel()
	l, err := readlimit.New(1, 1, nil)
	require.NoError(t, err)
	c, r := serve(t, l)

	first := make(chan error, 1)
	go list(c, time.Minute, first)
	<-r.entered

	// The one turn is taken: a read whose deadline comes first never
	// runs, and calls that do not read the log are not held.
	late := make(chan error, 1)
	list(c, 100*time.Millisecond, late)
	require.Equal(t, codes.DeadlineExceeded, status.Code(<-late))
	_, err = c.ValidatePlan(context.Background(), &stage4v1.ValidatePlanRequest{})
	require.NoError(t, err)
	select {
	case <-r.entered:
		t.Fatal("a second read ran while the first held the only turn")
	default:
	}

	// A read that waits gets the turn when the first ends.
	second := make(chan error, 1)
	go list(c, time.Minute, second)
	r.release <- struct{}{}
	require.NoError(t, <-first)
	<-r.entered
	r.release <- struct{}{}
	require.NoError(t, <-second)
}

func TestReadsOverTheirShareAreRefused(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	// A thousandth of the time: a millisecond of reading each second.
	l, err := readlimit.New(2, 0.001, reg)
	require.NoError(t, err)
	c, r := serve(t, l)

	first := make(chan error, 1)
	go list(c, time.Minute, first)
	<-r.entered
	// The read takes 20 ms, which readers pay back over 20 s.
	<-time.After(20 * time.Millisecond)
	r.release <- struct{}{}
	require.NoError(t, <-first)

	// A read whose deadline comes before readers are back under their
	// share is refused at once, without running or waiting it out.
	began := time.Now()
	refused := make(chan error, 1)
	list(c, 5*time.Second, refused)
	err = <-refused
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	require.Equal(t, rpcerr.AuditReadsBusy, rpcerr.Reason(err))
	require.Less(t, time.Since(began), 5*time.Second, "refused only at its deadline")
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP stage4_audit_reads_refused_total Audit reads refused with RESOURCE_EXHAUSTED because their turn would not come before their deadline (or MaxWait).
# TYPE stage4_audit_reads_refused_total counter
stage4_audit_reads_refused_total 1
`), "stage4_audit_reads_refused_total"))
	select {
	case <-r.entered:
		t.Fatal("a read over the share ran")
	default:
	}
}

func TestNewRefusesLimitsThatAdmitNothing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		concurrency int
		share       float64
	}{
		{"no turns", 0, 0.25},
		{"no time", 2, 0},
		{"more time than turns", 1, 1.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readlimit.New(tc.concurrency, tc.share, nil)
			require.Error(t, err)
		})
	}
}
