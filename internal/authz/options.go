package authz

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stage4/stage4/internal/ratelog"
)

// Option configures UnaryServerInterceptor.
type Option func(*config)

type config struct {
	methods    []string
	registerer prometheus.Registerer
	log        *ratelog.Logger
}

// WithMethods replaces AuditReadMethods as the protected methods (full
// names, "/package.Service/Method"); for tests and other services.
func WithMethods(methods ...string) Option {
	return func(c *config) { c.methods = methods }
}

// WithRegisterer registers the stage4_authz_denied_total counter with r.
// Without it the count is kept but not exported.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(c *config) { c.registerer = r }
}

// WithLogger logs every denial, rate-limited by l: a caller that retries a
// denied call in a loop must not flood the log. Without it denials are only
// counted (and logged by the call logger outside, if any).
func WithLogger(l *ratelog.Logger) Option {
	return func(c *config) { c.log = l }
}
