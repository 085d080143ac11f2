package stage3watch

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Option configures New.
type Option func(*Watcher)

// WithInterval sets how often Stage-3 is checked; DefaultInterval unless
// set.
func WithInterval(d time.Duration) Option {
	return func(w *Watcher) {
		if d > 0 {
			w.interval = d
		}
	}
}

// WithTimeout bounds one check; DefaultTimeout unless set.
func WithTimeout(d time.Duration) Option {
	return func(w *Watcher) {
		if d > 0 {
			w.timeout = d
		}
	}
}

// WithLogger logs each change of Stage-3's state: the first check's
// outcome, a failure with its cause and the fix, a recovery. Nothing is
// logged without it.
func WithLogger(l *slog.Logger) Option {
	return func(w *Watcher) { w.logger = l }
}

// WithRegisterer registers stage4_stage3_reachable and
// stage4_stage3_check_failures_total with r at Start.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(w *Watcher) { w.reg = r }
}

// WithOnChange calls f with the new error (nil: reachable) after the first
// check and after every change, one call at a time; readiness follows
// Stage-3 through it.
func WithOnChange(f func(error)) Option {
	return func(w *Watcher) { w.onChange = f }
}
