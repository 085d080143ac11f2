// Package malformed answers requests that do not decode (invalid wire data,
// a string that is not UTF-8, nesting beyond protobuf's recursion limit)
// with INVALID_ARGUMENT and reason REQUEST_MALFORMED instead of gRPC's
// INTERNAL, which the README reserves for bugs and which meshes retry, and
// makes them visible to the call log and the metrics.
//
// grpc-go decodes a unary request inside the generated handler, before the
// interceptor chain runs, and a codec error never gets there: the server
// stream writes an INTERNAL status itself ("grpc: failed to unmarshal the
// received message") before returning the error. So a Guard works in two
// halves on one server: its codec does not fail for the request types it
// guards but remembers the error for the (reset) message, and its unary
// interceptor, placed inside logging and metrics, finds the message and
// refuses the call there, as any other refusal is made.
package malformed

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/stage4/stage4/internal/rpcerr"
)

// logMsg is the warning for a malformed request; ratelog limits it as one
// message, whoever sends them.
const logMsg = "malformed request refused"

// Guard turns decoding failures of the request types of some services into
// INVALID_ARGUMENT refusals. Install both ServerOption and
// UnaryServerInterceptor on the same server.
type Guard struct {
	cfg   config
	inner encoding.CodecV2
	// guarded are the request types whose decoding failures are reported
	// by the interceptor: the inputs of unary methods only, because a
	// streaming handler would never hand its message to the interceptor.
	guarded map[protoreflect.FullName]bool

	// pending maps a message that failed to decode to its error, from the
	// codec to the interceptor of the same call; count lets the common
	// case (no failure anywhere) skip the map.
	pending sync.Map
	count   atomic.Int64

	refused *prometheus.CounterVec
}

// New guards the request types of the unary methods of services. A request
// type that some streaming method of services also takes is not guarded:
// its failures keep gRPC's INTERNAL.
func New(services []protoreflect.ServiceDescriptor, opts ...Option) *Guard {
	g := &Guard{inner: encoding.GetCodecV2(protoenc.Name), guarded: map[protoreflect.FullName]bool{}}
	for _, o := range opts {
		o(&g.cfg)
	}
	streamed := map[protoreflect.FullName]bool{}
	for _, svc := range services {
		methods := svc.Methods()
		for i := range methods.Len() {
			m := methods.Get(i)
			in := m.Input().FullName()
			if m.IsStreamingClient() || m.IsStreamingServer() {
				streamed[in] = true
			} else {
				g.guarded[in] = true
			}
		}
	}
	for name := range streamed {
		delete(g.guarded, name)
	}
	g.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "stage4", Name: "malformed_requests_total",
		Help: "Requests refused with REQUEST_MALFORMED because they did not decode, by method.",
	}, []string{"grpc_method"})
	if g.cfg.registerer != nil {
		g.cfg.registerer.MustRegister(g.refused)
	}
	return g
}

// ServerOption makes the Guard's codec the server's codec for every
// content-subtype. It is gRPC's proto codec but for guarded request types.
func (g *Guard) ServerOption() grpc.ServerOption {
	return grpc.ForceServerCodecV2(codec{g})
}

// UnaryServerInterceptor refuses the calls whose request the codec could
// not decode. Place it inside the call logger and the metrics, and outside
// every interceptor that reads the request: the message it is handed for a
// malformed request is empty.
func (g *Guard) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if g.count.Load() == 0 {
			return handler(ctx, req)
		}
		v, ok := g.pending.LoadAndDelete(req)
		if !ok {
			return handler(ctx, req)
		}
		g.count.Add(-1)
		return nil, g.refuse(ctx, info.FullMethod, req, v.(error))
	}
}

func (g *Guard) refuse(ctx context.Context, method string, req any, err error) error {
	g.refused.WithLabelValues(method).Inc()
	if g.cfg.log != nil {
		var addr string
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			addr = p.Addr.String()
		}
		// protobuf's decoding errors name a field at most, never its value.
		g.cfg.log.Log(ctx, logMsg, "grpc.method", method, "peer.address", addr, "error", err.Error())
	}
	name := req.(proto.Message).ProtoReflect().Descriptor().FullName()
	return rpcerr.New(codes.InvalidArgument, rpcerr.RequestMalformed,
		fmt.Sprintf("request is not a valid %s: %v", name, err), nil)
}

// codec is gRPC's proto codec, except that a guarded request type that does
// not decode is reset and its error left for the interceptor.
type codec struct{ g *Guard }

// Marshal implements encoding.CodecV2.
func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.g.inner.Marshal(v) }

// Name implements encoding.CodecV2.
func (c codec) Name() string { return c.g.inner.Name() }

// Unmarshal implements encoding.CodecV2.
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.g.inner.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok || !c.g.guarded[m.ProtoReflect().Descriptor().FullName()] {
		return err
	}
	// Whatever was decoded before the error must not reach anything.
	proto.Reset(m)
	c.g.count.Add(1)
	c.g.pending.Store(v, err)
	return nil
}
