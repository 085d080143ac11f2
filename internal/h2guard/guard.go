package h2guard

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/tap"
)

// Defaults of the timeouts.
const (
	// DefaultRequestReadTimeout is how long a request may take to arrive
	// whole: far more than any client on a working network needs for the
	// largest request, far less than a caller trickling bytes would like.
	DefaultRequestReadTimeout = 10 * time.Second
	// DefaultResponseWriteTimeout is how long a response may wait for its
	// client to take it: a 4 MiB response needs about 1 Mbit/s.
	DefaultResponseWriteTimeout = 30 * time.Second
)

// Thresholds past which a connection gets GOAWAY (ENHANCE_YOUR_CALM) and is
// closed.
const (
	// MinResets is how many streams a client must have reset on a
	// connection before the reset rule can close it; it is then closed once
	// more than half of its recent streams (the last 1,000 to 2,000) were
	// reset by the client: Envoy's premature-reset rule, without the
	// connection lifetime. A client that cancels most of its calls is
	// disconnected too; it reconnects.
	MinResets = 1000
	// MaxControlFrames is how many frames that carry no request a
	// connection may send at once beyond what a client needs: SETTINGS
	// after the first, PRIORITY, unknown types, empty DATA frames that do
	// not end their stream, empty CONTINUATION frames, and WINDOW_UPDATE
	// frames beyond windowUpdatesFree plus two per DATA frame the server
	// wrote and per stream the client opened. ControlFramesPerSecond of them
	// are forgiven every second.
	MaxControlFrames = 1000
	// ControlFramesPerSecond is the sustained rate of such frames a
	// connection may send.
	ControlFramesPerSecond = 100
)

// windowUpdatesFree is how many WINDOW_UPDATE frames a client may send
// beyond two per DATA frame the server wrote and per stream it opened.
const windowUpdatesFree = 1000

// closeLinger is how long a connection closed for abuse stays open after
// its GOAWAY, so that the client reads the GOAWAY before the close (with
// unread data, a reset) can make its kernel drop it.
const closeLinger = time.Second

// Reasons for closing a connection, the label of
// stage4_http2_connections_closed_total and the GOAWAY's debug data.
const (
	reasonRapidReset    = "rapid_reset"
	reasonControlFrames = "control_frames"
	reasonSlowReader    = "slow_reader"
)

// Guard follows the connections of one gRPC server. It is safe for
// concurrent use.
type Guard struct {
	cfg         config
	tickEvery   time.Duration
	readTicks   int64 // a request is late after more than this many ticks
	writeTicks  int64 // a response is stuck after more than this many ticks
	glitchDecay int64 // control frames forgiven per tick

	tick atomic.Int64 // advanced by the sweeper while connections are open

	mu       sync.Mutex
	conns    map[*Conn]struct{}
	sweeping bool

	closed       *prometheus.CounterVec
	readTimeouts prometheus.Counter
	untracked    prometheus.Counter
}

// New returns a Guard with the given options.
func New(opts ...Option) *Guard {
	g := &Guard{conns: map[*Conn]struct{}{}}
	for _, o := range opts {
		o(&g.cfg)
	}
	if g.cfg.readTimeout <= 0 {
		g.cfg.readTimeout = DefaultRequestReadTimeout
	}
	if g.cfg.writeTimeout <= 0 {
		g.cfg.writeTimeout = DefaultResponseWriteTimeout
	}
	if g.cfg.streamWindow <= 0 {
		g.cfg.streamWindow = 65535
	}
	// A quarter of the shorter timeout, so that a late request is
	// cancelled within a quarter more than its timeout; at most a second,
	// the precision of the control-frame rate.
	g.tickEvery = min(time.Second, max(5*time.Millisecond, min(g.cfg.readTimeout, g.cfg.writeTimeout)/4))
	g.readTicks = ticks(g.cfg.readTimeout, g.tickEvery)
	g.writeTicks = ticks(g.cfg.writeTimeout, g.tickEvery)
	g.glitchDecay = max(1, int64(ControlFramesPerSecond*g.tickEvery/time.Second))

	g.closed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "stage4", Subsystem: "http2", Name: "connections_closed_total",
		Help: "Connections closed with GOAWAY ENHANCE_YOUR_CALM, by reason: rapid_reset, control_frames, slow_reader.",
	}, []string{"reason"})
	for _, r := range []string{reasonRapidReset, reasonControlFrames, reasonSlowReader} {
		g.closed.WithLabelValues(r)
	}
	g.readTimeouts = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "stage4", Subsystem: "http2", Name: "request_read_timeouts_total",
		Help: "Calls cancelled because their request did not arrive whole within the request read timeout.",
	})
	g.untracked = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "stage4", Subsystem: "http2", Name: "untracked_streams_total",
		Help: "Streams whose frames the guard could not join to their call; they run without its limits.",
	})
	if r := g.cfg.registerer; r != nil {
		r.MustRegister(g.closed, g.readTimeouts, g.untracked)
	}
	return g
}

// ticks is how many sweeper ticks of every make up d, rounded up.
func ticks(d, every time.Duration) int64 {
	return int64((d + every - 1) / every)
}

// ServerOptions are the gRPC server options the guard needs, besides
// Credentials: grpc-go's own read buffer off (a Conn buffers instead, and
// must hand grpc-go no more than it asks for), the tap handle that joins
// each stream to its frames, and the interceptors that mark responses and
// client-streaming calls. The interceptors can be anywhere in their chains.
func (g *Guard) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ReadBufferSize(0),
		grpc.InTapHandle(g.tapHandle),
		grpc.ChainUnaryInterceptor(g.unaryInterceptor),
		grpc.ChainStreamInterceptor(g.streamInterceptor),
	}
}

// Credentials wraps the server's transport credentials so that every
// connection is guarded once its handshake is done; nil stands for
// plaintext (insecure.NewCredentials).
func (g *Guard) Credentials(c credentials.TransportCredentials) credentials.TransportCredentials {
	if c == nil {
		c = insecure.NewCredentials()
	}
	return guardedCreds{TransportCredentials: c, g: g}
}

// guardedCreds wraps the connection that its credentials' ServerHandshake
// returns.
type guardedCreds struct {
	credentials.TransportCredentials
	g *Guard
}

// ServerHandshake implements credentials.TransportCredentials.
func (c guardedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	return c.g.newConn(conn), info, nil
}

// Clone implements credentials.TransportCredentials.
func (c guardedCreds) Clone() credentials.TransportCredentials {
	return guardedCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

// tapHandle runs on a connection's reader goroutine for each new stream,
// right after grpc-go decoded its header block: it makes the stream's
// context the Stream that the connection's frames update.
func (g *Guard) tapHandle(ctx context.Context, _ *tap.Info) (context.Context, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.Addr.(*Addr); ok {
			return a.c.tap(ctx), nil
		}
	}
	g.untracked.Inc()
	return ctx, nil
}

// unaryInterceptor starts the clock of a call's response when its handler
// returns: grpc-go then queues the whole response, and the handler holds
// nothing more.
func (g *Guard) unaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if s := FromContext(ctx); s != nil {
		s.handlerReturned()
	}
	return resp, err
}

// streamInterceptor exempts client-streaming calls from the read timeout:
// their requests end when the client is done, which may be much later.
func (g *Guard) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.IsClientStream {
		if s := FromContext(ss.Context()); s != nil {
			s.clientStreaming()
		}
	}
	return handler(srv, ss)
}

// newConn guards conn.
func (g *Guard) newConn(conn net.Conn) *Conn {
	c := &Conn{
		Conn:    conn,
		g:       g,
		raw:     rawConn(conn),
		preface: len(http2.ClientPreface),
		streams: map[uint32]*Stream{},
	}
	c.addr = &Addr{Addr: conn.RemoteAddr(), c: c}
	g.mu.Lock()
	g.conns[c] = struct{}{}
	if !g.sweeping {
		g.sweeping = true
		go g.sweep()
	}
	g.mu.Unlock()
	return c
}

// forget stops following c.
func (g *Guard) forget(c *Conn) {
	g.mu.Lock()
	delete(g.conns, c)
	g.mu.Unlock()
}

// sweep advances the tick and checks every connection's clocks, until no
// connection is left.
func (g *Guard) sweep() {
	t := time.NewTicker(g.tickEvery)
	defer t.Stop()
	var conns []*Conn
	for range t.C {
		tick := g.tick.Add(1)
		g.mu.Lock()
		if len(g.conns) == 0 {
			g.sweeping = false
			g.mu.Unlock()
			return
		}
		conns = conns[:0]
		for c := range g.conns {
			conns = append(conns, c)
		}
		g.mu.Unlock()
		for _, c := range conns {
			c.sweep(tick)
		}
		clear(conns)
	}
}

// closing counts and logs a connection closed for abuse.
func (g *Guard) closing(c *Conn, reason string) {
	g.closed.WithLabelValues(reason).Inc()
	if g.cfg.log != nil {
		g.cfg.log.LogKey(context.Background(), "h2guard closed "+reason,
			"closing a connection that abuses HTTP/2", "reason", reason, "peer.address", c.addr.String())
	}
}

// timedOut counts and logs a call cancelled because its request was late.
func (g *Guard) timedOut(c *Conn) {
	g.readTimeouts.Inc()
	if g.cfg.log != nil {
		g.cfg.log.Log(context.Background(), "cancelled a call whose request did not arrive in time",
			"timeout", g.cfg.readTimeout.String(), "peer.address", c.addr.String())
	}
}

// goAway is the GOAWAY frame that closes a connection for reason.
func goAway(lastStream uint32, reason string) []byte {
	var b bytes.Buffer
	// Writing to a bytes.Buffer does not fail.
	_ = http2.NewFramer(&b, nil).WriteGoAway(lastStream, http2.ErrCodeEnhanceYourCalm, []byte(reason))
	return b.Bytes()
}

// Addr is the remote address of a guarded connection, as gRPC's
// peer.Peer carries it: the address itself, and the connection, which the
// tap handle finds through it.
type Addr struct {
	net.Addr
	c *Conn
}

// Unwrap returns the address itself.
func (a *Addr) Unwrap() net.Addr { return a.Addr }
