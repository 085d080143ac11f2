// Package readlimit bounds what reading the audit log may take from the
// gateway, so that heavy readers cannot starve executions: the
// audit-reading RPCs (ListAuditEvents, GetCheckpoint and the proofs) run at
// most a few at a time, and together for at most a share of the time. A
// listing's own budget of records scanned per call is the audit log's
// (audit.WithMaxScanned): past it a page ends early, with a
// next_page_token.
//
// Reading records is CPU-bound (each is hashed and decoded), and
// executions share the CPU with it: a concurrency limit alone still lets
// readers take whole cores, so the share is what protects executions. It
// is charged by the time each read took, after the fact, because what a
// read costs depends on its filter, the store and the log's size, which a
// price set in advance in records would guess: a read that took 200 ms
// leaves the next one waiting until readers are back under their share.
// Readers wait for their turn until their deadline (a reader without one
// waits at most MaxWait); one whose deadline would pass first is refused
// with RESOURCE_EXHAUSTED at once.
package readlimit

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/stage4/stage4/internal/rpcerr"
)

// Defaults of the limits, for a gateway whose main work is executions.
const (
	// DefaultConcurrency is how many audit reads run at once.
	DefaultConcurrency = 2
	// DefaultShare is the share of the time audit reads may take
	// together, on average: a fifth of a second each second. Measured
	// with 8 readers against ExecutePlan at 16 callers on two cores
	// (stage4load readers, docs/PERFORMANCE.md), 0.25 kept 0.73-0.81x of
	// the executions' throughput, just over the 0.7x aimed at; a fifth
	// leaves a margin for a busier host.
	DefaultShare = 0.2
	// MaxWait bounds the wait for a turn of a reader without a deadline.
	MaxWait = 30 * time.Second
)

// Limiter holds the audit reads' turns and share of the time.
type Limiter struct {
	sem     *semaphore.Weighted
	share   *rate.Limiter
	waited  prometheus.Histogram
	refused prometheus.Counter
}

// New returns a Limiter that lets concurrency reads run at once and take
// share (0 < share <= concurrency) of the time together, registering its
// metrics with reg (nil: not exported).
func New(concurrency int, share float64, reg prometheus.Registerer) (*Limiter, error) {
	if concurrency < 1 || share <= 0 || share > float64(concurrency) {
		return nil, errors.New("audit reads need a concurrency of at least 1 and a share of time above 0 and at most the concurrency")
	}
	l := &Limiter{
		sem: semaphore.NewWeighted(int64(concurrency)),
		// Tokens are microseconds of reading, refilled at share x 1e6 a
		// second; after a pause readers may take one second's share at
		// once.
		share: rate.NewLimiter(rate.Limit(share*1e6), max(int(share*1e6), 1)),
		waited: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "stage4", Subsystem: "audit_reads", Name: "wait_seconds",
			Help:    "Time audit reads waited for their turn and for readers to be back under their share of the time.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "audit_reads", Name: "refused_total",
			Help: "Audit reads refused with RESOURCE_EXHAUSTED because their turn would not come before their deadline (or MaxWait).",
		}),
	}
	if reg != nil {
		if err := errors.Join(reg.Register(l.waited), reg.Register(l.refused)); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// UnaryServerInterceptor makes the calls of methods (the audit-reading
// RPCs) wait for a turn, and for readers to be back under their share of
// the time, before they run; each then charges the time it took.
func (l *Limiter) UnaryServerInterceptor(methods []string) grpc.UnaryServerInterceptor {
	limited := map[string]bool{}
	for _, m := range methods {
		limited[m] = true
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !limited[info.FullMethod] {
			return handler(ctx, req)
		}
		wctx := ctx
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			wctx, cancel = context.WithTimeout(ctx, MaxWait)
			defer cancel()
		}
		began := time.Now()
		if err := l.sem.Acquire(wctx, 1); err != nil {
			return nil, l.refuse(ctx)
		}
		defer l.sem.Release(1)
		// Waits until earlier reads' time is paid back; fails at once
		// when that would be after the deadline.
		if err := l.share.WaitN(wctx, 1); err != nil {
			return nil, l.refuse(ctx)
		}
		start := time.Now()
		l.waited.Observe(start.Sub(began).Seconds())
		defer func() { l.charge(time.Since(start)) }()
		return handler(ctx, req)
	}
}

// charge puts the limiter into debt by the time a read took, which the
// next readers wait out. A reservation is at most the burst, so a long read
// is charged in several.
func (l *Limiter) charge(took time.Duration) {
	now := time.Now()
	for us := int(took.Microseconds()); us > 0; us -= l.share.Burst() {
		l.share.ReserveN(now, min(us, l.share.Burst()))
	}
}

// refuse is the error of a read that did not get its turn in time: the
// caller's own deadline or cancellation when that ended the wait, else
// RESOURCE_EXHAUSTED (retry later).
func (l *Limiter) refuse(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		code := codes.DeadlineExceeded
		if errors.Is(err, context.Canceled) {
			code = codes.Canceled
		}
		return rpcerr.New(code, rpcerr.AuditReadFailed, "the audit read waited for its turn until its caller gave up", nil)
	}
	l.refused.Inc()
	return rpcerr.New(codes.ResourceExhausted, rpcerr.AuditReadsBusy,
		"too many audit reads at once: this one would not get its turn before its deadline; retry later", nil)
}
