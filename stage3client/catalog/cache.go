package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
)

// Describer asks Stage-3 for its catalogue: stage3v1.Stage3ServiceClient
// and *stage3client.Client are Describers. An error whose gRPC code is
// UNIMPLEMENTED means that Stage-3 does not offer DescribeMethods.
type Describer interface {
	DescribeMethods(ctx context.Context, req *stage3v1.DescribeMethodsRequest, opts ...grpc.CallOption) (*stage3v1.DescribeMethodsResponse, error)
}

// Status says what a Cache holds.
type Status int

// The states of a Cache (see the package doc).
const (
	// StatusUnavailable: no catalogue, Stage-3 not asked yet, not reached,
	// or its answer refused.
	StatusUnavailable Status = iota + 1
	// StatusNotOffered: Stage-3 answered UNIMPLEMENTED.
	StatusNotOffered
	// StatusCurrent: the last refresh succeeded.
	StatusCurrent
	// StatusStale: the last refresh failed; the catalogue before it is kept.
	StatusStale
)

// String is the status as the metrics label it.
func (s Status) String() string {
	switch s {
	case StatusUnavailable:
		return "unavailable"
	case StatusNotOffered:
		return "not_offered"
	case StatusCurrent:
		return "current"
	case StatusStale:
		return "stale"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Snapshot is what a Cache holds at one moment. It is immutable.
type Snapshot struct {
	// Status says whether Catalog is set and how fresh it is.
	Status Status
	// Catalog is the catalogue to check plans against: set when Status is
	// StatusCurrent or StatusStale, nil otherwise.
	Catalog *Catalog
	// FetchTime is when Stage-3 answered with Catalog.
	FetchTime time.Time
	// AttemptTime is when Stage-3 was last asked; zero before the first
	// Refresh.
	AttemptTime time.Time
	// Err is why the last refresh failed; nil after a success, and when
	// Stage-3 does not offer DescribeMethods.
	Err error
}

// Defaults of a Cache's options.
const (
	// DefaultFetchTimeout bounds one DescribeMethods call.
	DefaultFetchTimeout = 5 * time.Second
	// DefaultCompileTimeout bounds the compilation of one answer.
	DefaultCompileTimeout = 10 * time.Second
	// unavailableRetry is how soon Run asks again while no catalogue has
	// been fetched, when its interval is longer: a Stage-3 that was not up
	// when Stage-4 started should not leave plans unchecked for minutes.
	unavailableRetry = 5 * time.Second
)

// errNotOffered marks Stage-3's UNIMPLEMENTED.
var errNotOffered = errors.New("stage3 does not offer DescribeMethods")

// Cache holds the catalogue of a Stage-3 and refreshes it (Refresh, Run).
// Snapshot is safe for concurrent use and costs one atomic load, for the
// validation of every plan.
type Cache struct {
	describe       Describer
	fetchTimeout   time.Duration
	compileTimeout time.Duration
	logger         *slog.Logger
	metrics        *metrics
	now            func() time.Time
	compileFunc    func(*stage3v1.DescribeMethodsResponse) (*Catalog, error) // Compile; tests slow it down

	snap atomic.Pointer[Snapshot]

	mu sync.Mutex // serialises Refresh
	// compiling is closed when a compilation that Refresh stopped waiting
	// for ends; nil when none runs. Refresh starts no other meanwhile, so
	// that a schema that compiles slowly occupies one goroutine at most.
	compiling chan struct{}
}

// New returns a Cache that asks d, holding no catalogue until the first
// Refresh. Its error is a metrics registration's.
func New(d Describer, opts ...Option) (*Cache, error) {
	c := &Cache{
		describe:       d,
		fetchTimeout:   DefaultFetchTimeout,
		compileTimeout: DefaultCompileTimeout,
		logger:         slog.New(slog.DiscardHandler),
		now:            time.Now,
		compileFunc:    Compile,
	}
	cfg := options{}
	for _, o := range opts {
		o(c, &cfg)
	}
	c.snap.Store(&Snapshot{Status: StatusUnavailable})
	if cfg.registerer != nil {
		m, err := newMetrics(cfg.registerer, c)
		if err != nil {
			return nil, err
		}
		c.metrics = m
	}
	return c, nil
}

// Snapshot returns what the Cache holds now; never nil.
func (c *Cache) Snapshot() *Snapshot { return c.snap.Load() }

// Refresh asks Stage-3 for its catalogue once and updates the Cache: a
// valid answer replaces the catalogue, UNIMPLEMENTED drops it, and any
// other failure keeps it (StatusStale, or StatusUnavailable when there was
// none) and is returned. Calls are serialised.
func (c *Cache) Refresh(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.snap.Load()
	next := &Snapshot{AttemptTime: c.now()}
	cat, err := c.fetch(ctx, prev)
	switch {
	case err == nil:
		next.Status, next.Catalog, next.FetchTime = StatusCurrent, cat, next.AttemptTime
	case errors.Is(err, errNotOffered):
		next.Status = StatusNotOffered
		err = nil
	case prev.Catalog != nil:
		next.Status, next.Catalog, next.FetchTime, next.Err = StatusStale, prev.Catalog, prev.FetchTime, err
	default:
		next.Status, next.Err = StatusUnavailable, err
	}
	c.snap.Store(next)
	c.report(prev, next)
	return err
}

// fetch asks Stage-3 and compiles its answer, reusing prev's catalogue
// when the answer has not changed.
func (c *Cache) fetch(ctx context.Context, prev *Snapshot) (*Catalog, error) {
	fctx, cancel := context.WithTimeout(ctx, c.fetchTimeout)
	defer cancel()
	resp, err := c.describe.DescribeMethods(fctx, &stage3v1.DescribeMethodsRequest{}, grpc.MaxCallRecvMsgSize(MaxBytes))
	if status.Code(err) == codes.Unimplemented {
		return nil, errNotOffered
	}
	if err != nil {
		return nil, fmt.Errorf("ask stage3: %w", err)
	}
	if prev.Catalog != nil && proto.Equal(resp, prev.Catalog.Description()) {
		return prev.Catalog, nil
	}
	return c.compile(resp)
}

// compile is Compile bounded by compileTimeout. Go cannot stop a
// goroutine, so a compilation that overruns is left to finish, and no
// other starts until it has.
func (c *Cache) compile(resp *stage3v1.DescribeMethodsResponse) (*Catalog, error) {
	if c.compiling != nil {
		select {
		case <-c.compiling:
			c.compiling = nil
		default:
			return nil, errors.New("compile: the previous answer is still being compiled")
		}
	}
	type result struct {
		cat *Catalog
		err error
	}
	done := make(chan result, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		cat, err := c.compileFunc(resp)
		done <- result{cat, err}
	}()
	timer := time.NewTimer(c.compileTimeout)
	defer timer.Stop()
	select {
	case r := <-done:
		return r.cat, r.err
	case <-timer.C:
		c.compiling = ended
		return nil, fmt.Errorf("compile: took longer than %v", c.compileTimeout)
	}
}

// Run refreshes the Cache every interval until ctx is done; while it
// holds no catalogue because Stage-3 was not reached, every 5 s at most.
// It does not refresh at once: call Refresh first for that.
func (c *Cache) Run(ctx context.Context, interval time.Duration) {
	for {
		wait := interval
		if c.Snapshot().Status == StatusUnavailable {
			wait = min(wait, unavailableRetry)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		_ = c.Refresh(ctx) // reported by Refresh
	}
}

// report logs a change of state and updates the metrics.
func (c *Cache) report(prev, next *Snapshot) {
	if c.metrics != nil {
		c.metrics.record(next)
	}
	switch next.Status {
	case StatusCurrent:
		if prev.Catalog != next.Catalog || prev.Status != StatusCurrent {
			c.logger.Info("stage3 catalog fetched; plans are checked against it",
				"methods", next.Catalog.Methods(), "domains", len(next.Catalog.Description().GetDomains()))
		}
	case StatusNotOffered:
		if prev.Status != StatusNotOffered {
			c.logger.Info("stage3 does not offer DescribeMethods; plans are not checked against a catalog")
		}
	case StatusStale:
		c.logger.Log(context.Background(), failureLevel(prev, next), "stage3 catalog refresh failed; plans are checked against the catalog fetched before",
			"error", next.Err, "fetch_time", next.FetchTime)
	case StatusUnavailable:
		c.logger.Log(context.Background(), failureLevel(prev, next), "stage3 catalog refresh failed; plans are not checked against a catalog until one is fetched",
			"error", next.Err)
	}
}

// failureLevel is WARN for a failed refresh after one that did not fail,
// or one that failed otherwise, and DEBUG for the same failure again: a
// Stage-3 that stays down is reported once, not at every retry.
func failureLevel(prev, next *Snapshot) slog.Level {
	if prev.Err != nil && prev.Err.Error() == next.Err.Error() {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}
