// Package stage3watch knows whether Stage-3 can be reached: a Watcher
// checks it at start, so that a TLS mismatch or a mistyped address is in
// the log before the first plan fails on it, with what to change, and then
// keeps checking, for readiness and a metric. Classify and Hint turn the
// transport's errors into a short cause and the operator's fix.
package stage3watch

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stage4/stage4/stage3client"
)

// Defaults of the Watcher's options.
const (
	// DefaultInterval is how often Stage-3 is checked: often enough that
	// readiness follows an outage within seconds, rarely enough that the
	// checks cost Stage-3 nothing measurable.
	DefaultInterval = 5 * time.Second
	// DefaultTimeout bounds one check, the first included: a Stage-3
	// behind a firewall that drops packets answers nothing at all.
	DefaultTimeout = 3 * time.Second
)

// Checker asks Stage-3 whether it serves; *stage3client.Client is one.
type Checker interface {
	Check(ctx context.Context) error
}

// Watcher checks Stage-3 now and then, and says whether it was reachable
// at the last check. It is safe for concurrent use.
type Watcher struct {
	checker  Checker
	cfg      stage3client.Config
	interval time.Duration
	timeout  time.Duration
	logger   *slog.Logger
	onChange func(error)

	reachable prometheus.Gauge
	failures  *prometheus.CounterVec
	reg       prometheus.Registerer

	mu    sync.Mutex
	err   error // of the last check; errNotChecked before the first
	cause Cause // of err
	first bool  // a check has completed

	ctx    context.Context // cancelled by Stop, with a check in progress
	cancel context.CancelFunc
	stop   chan struct{}
	done   chan struct{}
}

// errNotChecked is Err before the first check.
var errNotChecked = errors.New("stage3 not checked yet")

// New returns a Watcher that checks Stage-3 with checker; cfg is how
// Stage-3 is configured, for the hints. Start begins the checks.
func New(checker Checker, cfg stage3client.Config, opts ...Option) *Watcher {
	w := &Watcher{
		checker:  checker,
		cfg:      cfg,
		interval: DefaultInterval,
		timeout:  DefaultTimeout,
		logger:   slog.New(slog.DiscardHandler),
		err:      errNotChecked,
		reachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "stage4", Subsystem: "stage3", Name: "reachable",
			Help: "1 when the last check of Stage-3 (grpc.health.v1, over the connection plans take) succeeded, 0 when it failed.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "stage3", Name: "check_failures_total",
			Help: "Checks of Stage-3 that failed, by cause (tls_to_plaintext, tls_unknown_authority, name_resolution, connection_refused, timeout, ...).",
		}, []string{"cause"}),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	for _, o := range opts {
		o(w)
	}
	return w
}

// Start registers the metrics, checks Stage-3 once and logs the outcome
// (with the fix, when it failed), then checks every interval in the
// background until Stop. Stage-4 serves whatever the first check found
// (Err has it): Stage-3 may be starting too, and readiness waits for it.
// Its only error is a failure to register the metrics.
func (w *Watcher) Start() error {
	if w.reg != nil {
		for _, c := range []prometheus.Collector{w.reachable, w.failures} {
			if err := w.reg.Register(c); err != nil {
				close(w.done)
				return err
			}
		}
	}
	w.check()
	go w.run()
	return nil
}

// Stop ends the checks, cancelling one in progress, and waits for it;
// only after Start.
func (w *Watcher) Stop() {
	w.cancel()
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// Err is the error of the last check: nil when Stage-3 answered.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *Watcher) run() {
	defer close(w.done)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			w.check()
		}
	}
}

// check checks Stage-3 once, updates the metrics and the state, and logs
// and reports a change: from reachable to not, back, or from one cause of
// failure to another.
func (w *Watcher) check() {
	ctx, cancel := context.WithTimeout(w.ctx, w.timeout)
	err := w.checker.Check(ctx)
	cancel()
	if w.ctx.Err() != nil {
		return // stopped: the answer says nothing about Stage-3
	}
	cause := Classify(err)
	if err != nil {
		w.reachable.Set(0)
		w.failures.WithLabelValues(string(cause)).Inc()
	} else {
		w.reachable.Set(1)
	}

	w.mu.Lock()
	first, was, wasCause := !w.first, w.err, w.cause
	w.first, w.err, w.cause = true, err, cause
	changed := first || (was == nil) != (err == nil) || cause != wasCause
	w.mu.Unlock()
	if !changed {
		return
	}
	// Under no lock, so that onChange may ask Err; checks run one at a
	// time (the first before run starts), so reports keep their order.
	w.report(first, err, cause)
	if w.onChange != nil {
		w.onChange(err)
	}
}

// report logs a change of Stage-3's state. The error is gRPC's, which
// describes the transport (a certificate, a host name): no plan data.
func (w *Watcher) report(first bool, err error, cause Cause) {
	target := slog.String("stage3_addr", w.cfg.Target)
	switch {
	case err == nil && first:
		w.logger.Info("stage3 answers", target)
	case err == nil:
		w.logger.Info("stage3 reachable again; ready for plans", target)
	default:
		msg := "stage3 unreachable; not ready for plans until it answers"
		if first {
			msg = "stage3 unreachable at start; not ready for plans until it answers"
		}
		w.logger.Error(msg, target, slog.String("cause", string(cause)),
			slog.String("hint", Hint(cause, w.cfg)), slog.String("error", err.Error()))
	}
}
