package h2guard

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stage4/stage4/internal/ratelog"
)

// Option configures New.
type Option func(*config)

type config struct {
	readTimeout  time.Duration
	writeTimeout time.Duration
	streamWindow int64
	registerer   prometheus.Registerer
	log          *ratelog.Logger
}

// WithRequestReadTimeout sets how long a request may take to arrive whole
// (DefaultRequestReadTimeout when not given or not positive): from the
// start of its stream, or from when the call began to read it (see
// Stream.PauseReadTimeout). A call whose request is late is cancelled.
func WithRequestReadTimeout(d time.Duration) Option {
	return func(c *config) { c.readTimeout = d }
}

// WithResponseWriteTimeout sets how long a response may wait to be written
// once its handler has returned (DefaultResponseWriteTimeout when not given
// or not positive); a connection with a response older than that is closed.
func WithResponseWriteTimeout(d time.Duration) Option {
	return func(c *config) { c.writeTimeout = d }
}

// WithStreamWindow tells the guard the server's initial HTTP/2 stream
// window (grpc.StaticStreamWindowSize), the most of a request the
// transport takes in before its call reads it. Without it the guard
// assumes HTTP/2's default, 65535 bytes; a server with a dynamic window
// should give the smallest the window can be.
func WithStreamWindow(bytes int32) Option {
	return func(c *config) { c.streamWindow = int64(bytes) }
}

// WithRegisterer registers the guard's counters with r: connections closed
// by reason (stage4_http2_connections_closed_total), calls cancelled because
// their request was late (stage4_http2_request_read_timeouts_total), and
// streams the guard could not follow (stage4_http2_untracked_streams_total,
// which stays 0 unless grpc-go changes how it reads). Without it they are
// kept but not exported.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(c *config) { c.registerer = r }
}

// WithLogger logs every connection closed and every call cancelled,
// rate-limited by l, since a hostile client can cause them at will.
func WithLogger(l *ratelog.Logger) Option {
	return func(c *config) { c.log = l }
}
