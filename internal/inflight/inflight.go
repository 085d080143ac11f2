// Package inflight bounds the memory that requests hold at once while Stage-4
// reads, decodes and handles them, so that a burst of maximum-size requests
// queues instead of taking the process's memory.
//
// The bound must act before a request's body is read: grpc-go reads the
// whole message into memory as soon as the handler asks for it, and decodes
// it at once (a 4 MiB request of small list values decodes into about
// 18 times that). Neither a codec nor an interceptor runs early enough, and
// the transport's tap handle runs on the connection's reader goroutine,
// where waiting would stall every call of the connection. So a Limiter
// wraps the handlers of the services registered through its Registrar: each
// call reserves the largest request size before it reads its request, keeps
// DecodedBytesPerByte times the request's encoded size (at most the largest
// request size) once it is decoded, and gives that back when the handler
// returns. Until its reservation is granted a call's body stays in the
// transport, which holds at most one HTTP/2 flow-control window of it.
package inflight

import (
	"context"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// DecodedBytesPerByte is what a call keeps reserved per byte of its encoded
// request while it is handled: the decoded form of a request can be many
// times its encoded size (about 18 times for a list of nulls, the worst
// case of google.protobuf.Value, against 1 to 2 times for text), and it
// lives until the handler returns.
const DecodedBytesPerByte = 16

// Limiter holds the budget of request bytes in flight. It is safe for
// concurrent use.
type Limiter struct {
	cfg        config
	sem        *semaphore.Weighted
	maxRequest int64

	mu       sync.Mutex
	reserved int64 // bytes held by calls now
	kept     int64 // the part of reserved held by calls past decoding
	peak     int64 // the most kept since reserved was last 0

	waits *prometheus.CounterVec
}

// New returns a Limiter that lets calls hold at most budget bytes of
// requests together, where one request is at most maxRequestBytes (the
// server's receive limit) and budget is at least that.
func New(budget, maxRequestBytes int64, opts ...Option) (*Limiter, error) {
	if maxRequestBytes <= 0 || budget < maxRequestBytes {
		return nil, fmt.Errorf("in-flight request budget %d must be at least the largest request, %d bytes", budget, maxRequestBytes)
	}
	l := &Limiter{sem: semaphore.NewWeighted(budget), maxRequest: maxRequestBytes}
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

// wrap makes a unary handler reserve the largest request before its
// request is read, and keep only the request's size from when it is
// decoded until the handler returns.
func (l *Limiter) wrap(method string, h grpc.MethodHandler) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		if err := l.acquire(ctx, method); err != nil {
			return nil, err
		}
		held, decoded := l.maxRequest, false
		defer func() { l.release(held, decoded) }()
		return h(srv, ctx, func(m any) error {
			err := dec(m)
			if err == nil && !decoded {
				keep := min(DecodedBytesPerByte*requestSize(m), held)
				l.keep(held, keep)
				held, decoded = keep, true
			}
			return err
		}, icpt)
	}
}

// requestSize is the encoded size of the request m that was just decoded.
// proto.Size walks the message: under a microsecond for an ordinary plan;
// for a 4 MiB list of small values about a third of what decoding it took,
// paid by at most budget / largest-request calls at a time. A stats.Handler
// could report the size from the wire instead, but costs about 20
// allocations on every call.
func requestSize(m any) int64 {
	if pm, ok := m.(proto.Message); ok {
		return int64(proto.Size(pm))
	}
	return 0
}

// acquire reserves maxRequest bytes, waiting while the budget is spent.
func (l *Limiter) acquire(ctx context.Context, method string) error {
	if !l.sem.TryAcquire(l.maxRequest) {
		l.waits.WithLabelValues(method).Inc()
		if err := l.sem.Acquire(ctx, l.maxRequest); err != nil {
			// Only the caller's deadline or cancellation ends the wait,
			// and the caller then sees its own DEADLINE_EXCEEDED or
			// CANCELED whatever the server says: nothing was read or run.
			return status.FromContextError(err).Err()
		}
	}
	l.mu.Lock()
	l.reserved += l.maxRequest
	l.mu.Unlock()
	// A caller that gave up while waiting (Acquire may succeed even so)
	// must not cost the decoding of its request.
	if err := ctx.Err(); err != nil {
		l.release(l.maxRequest, false)
		return status.FromContextError(err).Err()
	}
	return nil
}

// keep shrinks a call's reservation from held to keep once its request is
// decoded.
func (l *Limiter) keep(held, keep int64) {
	l.sem.Release(held - keep)
	l.mu.Lock()
	l.reserved -= held - keep
	l.kept += keep
	l.peak = max(l.peak, l.kept)
	l.mu.Unlock()
}

// release gives back the n bytes a call held at its end; decoded says
// whether they were kept past decoding. When the last call of a burst ends,
// it calls the after-burst hook; a burst is a time with calls in flight in
// which some decoded request kept a whole reservation, that is, was large.
// Reservations for reading do not make a burst: every call makes one,
// however small its request.
func (l *Limiter) release(n int64, decoded bool) {
	l.sem.Release(n)
	l.mu.Lock()
	l.reserved -= n
	if decoded {
		l.kept -= n
	}
	var burstEnded bool
	if l.reserved == 0 {
		burstEnded = l.peak >= l.maxRequest
		l.peak = 0
	}
	l.mu.Unlock()
	if burstEnded && l.cfg.afterBurst != nil {
		l.cfg.afterBurst()
	}
}
