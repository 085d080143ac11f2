// Package inflight bounds the memory that requests hold at once while Stage-4
// reads, decodes and handles them, so that a burst of large requests queues
// instead of taking the process's memory, and so that callers that send
// their requests slowly cannot hold the budget that the others need.
//
// The bound must act before a request's body is read: grpc-go reads the
// whole message into memory as soon as the handler asks for it, and decodes
// it at once (a 4 MiB request of small list values decodes into about
// 18 times that). Neither a codec nor an interceptor runs early enough, and
// the transport's tap handle runs on the connection's reader goroutine,
// where waiting would stall every call of the connection. So a Limiter
// wraps the handlers of the services registered through its Registrar.
//
// With a Request for the call (WithRequests: the transport's view of the
// call's request, from internal/h2guard), a call first waits, holding
// nothing, until its request has arrived whole, or its message is too large
// to arrive before the call reads it; a request that does neither within
// the transport's read timeout ends the call. It then reserves
// DecodedBytesPerByte times the message's declared length (at most the
// largest request; the largest request when it is compressed), which
// covers reading and decoding it, and keeps that until the handler returns.
// Three rules grant reservations:
//
//   - the budget: all reservations together stay within it;
//   - room for requests that have arrived: calls still reading their
//     requests (larger than a stream window, at the caller's pace) hold at
//     most the budget less one largest request, so that callers that
//     trickle large bodies cannot take what requests that are already here
//     need;
//   - a fair share per connection: a connection's calls hold at most the
//     budget divided by the connections with calls holding or waiting,
//     except that a connection holding nothing may always start one call.
//
// A call that cannot be granted waits, holding nothing, until it can or its
// caller's deadline passes; waiters are granted in order, skipping those
// that do not fit. Without a Request (a connection the transport does not
// follow), a call reserves the largest request before it reads, keeps
// DecodedBytesPerByte times the decoded request's size (at most that) once
// decoded, and counts for no connection.
package inflight

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// DecodedBytesPerByte is what a call reserves per byte of its encoded
// request while it is read, decoded and handled: the decoded form of a
// request can be many times its encoded size (about 18 times for a list of
// nulls, the worst case of google.protobuf.Value, against 1 to 2 times for
// text), and it lives until the handler returns.
const DecodedBytesPerByte = 16

// Request is what the transport knows of a call's request before the call
// reads it. internal/h2guard's Stream is one.
type Request interface {
	// Wait waits until the request has arrived whole, or its message is
	// too large to arrive before the call reads it, or ctx ends; a request
	// still incomplete when the transport's read timeout passes fails it.
	// It returns the message's declared length and whether it is
	// compressed, and whether the request has arrived whole.
	Wait(ctx context.Context) (length uint32, compressed, whole bool, err error)
	// Conn identifies the call's connection; it must be comparable.
	Conn() any
	// PauseReadTimeout stops the transport's read timeout while the call
	// waits for the budget; ResumeReadTimeout restarts it from zero.
	PauseReadTimeout()
	ResumeReadTimeout()
	// ReadTimeoutErr is the error of a call whose request the transport
	// gave up on (read timeout), or nil. (Not Err: a Request may be a
	// context.Context.)
	ReadTimeoutErr() error
}

// Limiter holds the budget of request bytes in flight. It is safe for
// concurrent use.
type Limiter struct {
	cfg        config
	budget     int64
	readCap    int64 // what calls still reading their requests may hold together
	maxRequest int64

	mu       sync.Mutex
	reserved int64 // bytes held by calls now
	reading  int64 // the part of reserved held by calls still reading their requests
	kept     int64 // the part of reserved held by calls past decoding
	peak     int64 // the most kept since reserved was last 0
	conns    map[any]*share
	queue    []*waiter

	waits *prometheus.CounterVec
}

// share is what one connection's calls hold and how many hold or wait.
type share struct {
	key   any
	held  int64
	calls int
}

// waiter is a call waiting for n bytes.
type waiter struct {
	n       int64
	reading bool
	sh      *share
	ready   chan struct{} // closed when granted
	granted bool
}

// New returns a Limiter that lets calls hold at most budget bytes of
// requests together, where one request is at most maxRequestBytes (the
// server's receive limit) and budget is at least that.
func New(budget, maxRequestBytes int64, opts ...Option) (*Limiter, error) {
	if maxRequestBytes <= 0 || budget < maxRequestBytes {
		return nil, fmt.Errorf("in-flight request budget %d must be at least the largest request, %d bytes", budget, maxRequestBytes)
	}
	l := &Limiter{budget: budget, maxRequest: maxRequestBytes, conns: map[any]*share{}}
	// Below two largest requests, keeping one back would leave no room
	// to read a large request at all.
	l.readCap = budget
	if budget >= 2*maxRequestBytes {
		l.readCap = budget - maxRequestBytes
	}
	for _, o := range opts {
		o(&l.cfg)
	}
	l.waits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "stage4", Subsystem: "inflight", Name: "waits_total",
		Help: "Calls that waited for the in-flight request budget before reading their request, by method.",
	}, []string{"grpc_method"})
	if r := l.cfg.registerer; r != nil {
		r.MustRegister(l.waits, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "stage4", Subsystem: "inflight", Name: "request_bytes",
			Help: "Request bytes reserved by calls being read, decoded or handled now.",
		}, func() float64 {
			l.mu.Lock()
			defer l.mu.Unlock()
			return float64(l.reserved)
		}))
	}
	return l, nil
}

// Registrar returns a ServiceRegistrar that registers services with r, each
// unary method's handler wrapped to take its share of the budget.
// Streaming methods are registered unchanged.
func (l *Limiter) Registrar(r grpc.ServiceRegistrar) grpc.ServiceRegistrar {
	return registrar{l: l, r: r}
}

type registrar struct {
	l *Limiter
	r grpc.ServiceRegistrar
}

// RegisterService implements grpc.ServiceRegistrar.
func (w registrar) RegisterService(sd *grpc.ServiceDesc, impl any) {
	wrapped := *sd
	wrapped.Methods = make([]grpc.MethodDesc, len(sd.Methods))
	for i, m := range sd.Methods {
		wrapped.Methods[i] = grpc.MethodDesc{
			MethodName: m.MethodName,
			Handler:    w.l.wrap("/"+sd.ServiceName+"/"+m.MethodName, m.Handler),
		}
	}
	w.r.RegisterService(&wrapped, impl)
}

// call is one call's reservation.
type call struct {
	l       *Limiter
	req     Request // nil without one
	sh      *share  // nil without a Request
	held    int64
	reading bool // held counts in l.reading
	sized   bool // held already covers the decoded request: no need to measure it
	decoded bool
}

// wrap makes a unary handler reserve its request's share of the budget
// before the request is read, and keep it until the handler returns.
func (l *Limiter) wrap(method string, h grpc.MethodHandler) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		c := &call{l: l}
		if err := c.admit(ctx, method); err != nil {
			return nil, err
		}
		defer c.end()
		return h(srv, ctx, func(m any) error { return c.decode(m, dec) }, icpt)
	}
}

// admit waits for the request (with a Request) and for the call's
// reservation.
func (c *call) admit(ctx context.Context, method string) error {
	l := c.l
	n := l.maxRequest
	var key any
	if l.cfg.requests != nil {
		if req, ok := l.cfg.requests(ctx); ok {
			length, compressed, whole, err := req.Wait(ctx)
			if err != nil {
				return err
			}
			c.req, key, c.reading = req, req.Conn(), !whole
			// A compressed message may decompress to the largest request.
			if !compressed {
				n, c.sized = min(n, DecodedBytesPerByte*int64(length)), true
			}
		}
	}
	if c.reading {
		c.req.PauseReadTimeout()
	}
	sh, err := l.acquire(ctx, method, n, c.reading, key)
	if c.reading {
		c.req.ResumeReadTimeout()
	}
	if err != nil {
		return err
	}
	c.sh, c.held = sh, n
	return nil
}

// decode reads and decodes the request into m with dec; once decoded, a
// reservation that did not know the decoded size shrinks to
// DecodedBytesPerByte times the request's size.
func (c *call) decode(m any, dec func(any) error) error {
	err := dec(m)
	if c.reading {
		c.l.doneReading(c.held)
		c.reading = false
	}
	if err != nil {
		if c.req != nil {
			if rerr := c.req.ReadTimeoutErr(); rerr != nil {
				return rerr
			}
		}
		return err
	}
	if !c.decoded {
		keep := c.held
		if !c.sized {
			keep = min(DecodedBytesPerByte*requestSize(m), c.held)
		}
		c.l.keep(c.sh, c.held, keep)
		c.held, c.decoded = keep, true
	}
	return nil
}

// end gives the call's reservation back.
func (c *call) end() {
	if c.reading {
		c.l.doneReading(c.held)
	}
	c.l.release(c.sh, c.held, c.decoded)
}

// requestSize is the encoded size of the request m that was just decoded.
// proto.Size walks the message: under a microsecond for an ordinary plan;
// for a 4 MiB list of small values about a third of what decoding it took.
// It is needed only without a Request, or for a compressed request, whose
// declared length is not its size.
func requestSize(m any) int64 {
	if pm, ok := m.(proto.Message); ok {
		return int64(proto.Size(pm))
	}
	return 0
}

// acquire reserves n bytes for a call on the connection key (nil: none),
// waiting while they do not fit; reading says whether the call has still
// to read its request.
func (l *Limiter) acquire(ctx context.Context, method string, n int64, reading bool, key any) (*share, error) {
	l.mu.Lock()
	sh := l.join(key)
	if l.fits(n, reading, sh) {
		l.take(n, reading, sh)
		l.mu.Unlock()
	} else {
		w := &waiter{n: n, reading: reading, sh: sh, ready: make(chan struct{})}
		l.queue = append(l.queue, w)
		l.mu.Unlock()
		l.waits.WithLabelValues(method).Inc()
		select {
		case <-w.ready:
		case <-ctx.Done():
			l.mu.Lock()
			granted := w.granted
			if !granted {
				l.queue = slices.DeleteFunc(l.queue, func(q *waiter) bool { return q == w })
				l.leave(sh)
				l.grantWaiting()
			}
			l.mu.Unlock()
			if granted {
				l.giveBack(sh, n, reading)
			}
			// Only the caller's deadline or cancellation ends the wait,
			// and the caller then sees its own DEADLINE_EXCEEDED or
			// CANCELED whatever the server says: nothing was read or run.
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	// A caller that gave up while waiting (its grant may have come at the
	// same time) must not cost the decoding of its request.
	if err := ctx.Err(); err != nil {
		l.giveBack(sh, n, reading)
		return nil, status.FromContextError(err).Err()
	}
	return sh, nil
}

// giveBack returns a reservation that was never used.
func (l *Limiter) giveBack(sh *share, n int64, reading bool) {
	if reading {
		l.doneReading(n)
	}
	l.release(sh, n, false)
}

// join counts a call of the connection key and returns its share, nil
// for no connection. l.mu is held.
func (l *Limiter) join(key any) *share {
	if key == nil {
		return nil
	}
	sh := l.conns[key]
	if sh == nil {
		sh = &share{key: key}
		l.conns[key] = sh
	}
	sh.calls++
	return sh
}

// leave uncounts a call of sh's connection. l.mu is held.
func (l *Limiter) leave(sh *share) {
	if sh == nil {
		return
	}
	sh.calls--
	if sh.calls == 0 {
		delete(l.conns, sh.key)
	}
}

// fits says whether n more bytes may be reserved now. l.mu is held.
func (l *Limiter) fits(n int64, reading bool, sh *share) bool {
	if l.reserved+n > l.budget {
		return false
	}
	if reading && l.reading+n > l.readCap {
		return false
	}
	// l.conns holds sh's connection, so it is not empty.
	return sh == nil || sh.held == 0 || sh.held+n <= l.budget/int64(len(l.conns))
}

// take reserves n bytes. l.mu is held.
func (l *Limiter) take(n int64, reading bool, sh *share) {
	l.reserved += n
	if reading {
		l.reading += n
	}
	if sh != nil {
		sh.held += n
	}
}

// grantWaiting grants, in order, every waiting call that fits. l.mu is
// held.
func (l *Limiter) grantWaiting() {
	l.queue = slices.DeleteFunc(l.queue, func(w *waiter) bool {
		if !l.fits(w.n, w.reading, w.sh) {
			return false
		}
		l.take(w.n, w.reading, w.sh)
		w.granted = true
		close(w.ready)
		return true
	})
}

// doneReading moves n bytes of a call that has read its request out of
// the reading calls' part.
func (l *Limiter) doneReading(n int64) {
	l.mu.Lock()
	l.reading -= n
	l.grantWaiting()
	l.mu.Unlock()
}

// keep shrinks a call's reservation from held to keep once its request is
// decoded.
func (l *Limiter) keep(sh *share, held, keep int64) {
	l.mu.Lock()
	l.reserved -= held - keep
	if sh != nil {
		sh.held -= held - keep
	}
	l.kept += keep
	l.peak = max(l.peak, l.kept)
	if keep < held {
		l.grantWaiting()
	}
	l.mu.Unlock()
}

// release gives back the n bytes a call held at its end; decoded says
// whether they were kept past decoding. When the last call of a burst ends,
// it calls the after-burst hook; a burst is a time with calls in flight in
// which the requests kept past decoding added up to the largest request.
// Reservations for reading do not make a burst: every call makes one,
// however small its request.
func (l *Limiter) release(sh *share, n int64, decoded bool) {
	l.mu.Lock()
	l.reserved -= n
	if decoded {
		l.kept -= n
	}
	if sh != nil {
		sh.held -= n
	}
	l.leave(sh)
	var burstEnded bool
	if l.reserved == 0 {
		burstEnded = l.peak >= l.maxRequest
		l.peak = 0
	}
	l.grantWaiting()
	l.mu.Unlock()
	if burstEnded && l.cfg.afterBurst != nil {
		l.cfg.afterBurst()
	}
}
