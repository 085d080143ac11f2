package malformed

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stage4/stage4/internal/ratelog"
)

// Option configures New.
type Option func(*config)

type config struct {
	registerer prometheus.Registerer
	log        *ratelog.Logger
}

// WithRegisterer registers the stage4_malformed_requests_total counter with
// r. Without it the count is kept but not exported.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(c *config) { c.registerer = r }
}

// WithLogger logs every refusal, with the decoding error, rate-limited by
// l: a client that sends garbage in a loop must not flood the log.
func WithLogger(l *ratelog.Logger) Option {
	return func(c *config) { c.log = l }
}
