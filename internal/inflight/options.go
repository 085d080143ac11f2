package inflight

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// Option configures New.
type Option func(*config)

type config struct {
	registerer prometheus.Registerer
	afterBurst func()
	requests   func(context.Context) (Request, bool)
}

// WithRequests gives the Limiter each call's Request, from the call's
// context; from returns false for a call without one. With it, calls
// reserve by their requests' declared lengths, wait for their requests
// holding nothing, and share the budget fairly between connections (see
// the package documentation).
func WithRequests(from func(context.Context) (Request, bool)) Option {
	return func(c *config) { c.requests = from }
}

// WithRegisterer registers the Limiter's metrics with r: the request bytes
// reserved now (stage4_inflight_request_bytes) and the calls that had to
// wait (stage4_inflight_waits_total). Without it they are not exported.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(c *config) { c.registerer = r }
}

// WithAfterBurst calls f when no call is in flight any more after one or
// more large requests (each keeping a whole reservation), on the goroutine
// of the call that ended last: the moment to give the memory they left
// behind back to the system. f must return quickly
// (start a goroutine for slow work) and limit how often it acts.
func WithAfterBurst(f func()) Option {
	return func(c *config) { c.afterBurst = f }
}
