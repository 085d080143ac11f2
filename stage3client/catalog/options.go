package catalog

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Option configures a Cache.
type Option func(*Cache, *options)

// options are what New needs only while it builds the Cache.
type options struct {
	registerer prometheus.Registerer
}

// WithLogger logs the Cache's changes of state and failed refreshes; by
// default nothing is logged.
func WithLogger(l *slog.Logger) Option {
	return func(c *Cache, _ *options) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithRegisterer registers the Cache's metrics with r (see the README):
// stage4_stage3_catalog_refreshes_total{result}, stage4_stage3_catalog_state{state},
// stage4_stage3_catalog_methods and
// stage4_stage3_catalog_last_success_timestamp_seconds.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(_ *Cache, o *options) { o.registerer = r }
}

// WithFetchTimeout bounds each DescribeMethods call; the default is
// DefaultFetchTimeout. Values of 0 or less keep the default.
func WithFetchTimeout(d time.Duration) Option {
	return func(c *Cache, _ *options) {
		if d > 0 {
			c.fetchTimeout = d
		}
	}
}

// WithCompileTimeout bounds the compilation of each new answer; the
// default is DefaultCompileTimeout. Values of 0 or less keep the default.
func WithCompileTimeout(d time.Duration) Option {
	return func(c *Cache, _ *options) {
		if d > 0 {
			c.compileTimeout = d
		}
	}
}
