package gateway

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/reflect/protoreflect"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/h2guard"
	"github.com/stage4/stage4/internal/inflight"
	"github.com/stage4/stage4/internal/malformed"
	"github.com/stage4/stage4/internal/ratelog"
	"github.com/stage4/stage4/internal/readlimit"
)

// DefaultMaxHeaderListBytes is far above what real metadata needs (tokens,
// trace context) and far below gRPC's own 16 MiB, which let a caller make
// the server hold megabytes per call.
const DefaultMaxHeaderListBytes = 64 << 10

// InflightRequestsPerBudget is how many maximum-size requests the default
// in-flight budget lets in at once. Measured with "stage4load burst"
// (docs/DESIGN.md): 8 keeps the peak RSS of 200 concurrent 4 MiB requests
// of the worst shape under 1 GiB; more only adds memory, since large
// requests are CPU-bound anyway.
const InflightRequestsPerBudget = 8

// warningInterval is the least time between two log lines of one warning a
// caller can trigger at will (a denied audit read, a malformed request):
// the first is logged at once, the rest are counted into the next line.
const warningInterval = 10 * time.Second

// HTTP/2 flow-control windows. The stream window bounds how much of a
// request's body the transport takes in before the handler asks for it,
// that is while the call waits for the in-flight budget; gRPC's default
// dynamic window grows to several MiB per stream. Once the handler reads,
// gRPC opens the window to the whole message, so large requests are not
// slowed. The connection window bounds nothing (gRPC acknowledges it on
// receipt) and is sized for many streams per connection.
const (
	streamWindowBytes = 64 << 10
	connWindowBytes   = 1 << 20
)

// DefaultAuditReadMaxScanned is the records (and index entries) one
// ListAuditEvents call may scan before its page ends early with a
// next_page_token: ten full pages, a few tens of milliseconds of work here
// (docs/PERFORMANCE.md), whatever the filter or the log's size.
const DefaultAuditReadMaxScanned = 10_000

// hardening is what protects the gateway from hostile and careless callers,
// built once per gateway: who may read the audit log, what a request that
// does not decode gets, how many request bytes calls may hold at once, how
// large a header list may be, how long requests may take to arrive and
// responses to be taken, which HTTP/2 floods close a connection, and the
// rate limit on the warnings those callers cause.
type hardening struct {
	maxHeaderListBytes uint32
	warnings           *ratelog.Logger
	// authz refuses the audit-reading RPCs to callers not on
	// cfg.auditReaders.
	authz grpc.UnaryServerInterceptor
	// reads makes the audit-reading RPCs that authz let through take
	// turns and a share of the time, so that they cannot starve
	// executions.
	reads grpc.UnaryServerInterceptor
	// malformed answers Stage4Service requests that do not decode with
	// INVALID_ARGUMENT; its codec is among serverOptions, its interceptor
	// goes into the chain.
	malformed *malformed.Guard
	// inflight bounds the request bytes that calls hold at once; register
	// Stage4Service through its Registrar.
	inflight *inflight.Limiter
	// h2 follows every connection's HTTP/2 frames: it tells inflight each
	// request's declared length and connection, cancels calls whose
	// requests are late, and closes connections that flood control frames
	// or do not read their responses. Its credentials wrap the server's.
	h2 *h2guard.Guard
}

// newHardening builds the gateway's protections from cfg, registering their
// metrics with reg and logging through logger.
func newHardening(cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*hardening, error) {
	h := &hardening{maxHeaderListBytes: DefaultMaxHeaderListBytes, warnings: ratelog.New(logger, warningInterval)}
	if cfg.MaxHeaderListBytes > 0 {
		if cfg.MaxHeaderListBytes > math.MaxUint32 {
			return nil, fmt.Errorf("%w: --max-header-list-bytes must be below 4 GiB", ErrConfig)
		}
		h.maxHeaderListBytes = uint32(cfg.MaxHeaderListBytes)
	}
	h.authz = authz.UnaryServerInterceptor(cfg.AuditReaders, authz.WithRegisterer(reg), authz.WithLogger(h.warnings))
	if cfg.MaxConcurrentAuditReads < 0 || cfg.AuditReadShare < 0 || cfg.AuditReadMaxScanned < 0 {
		return nil, fmt.Errorf("%w: --max-concurrent-audit-reads, --audit-read-share and --audit-read-max-scanned must not be negative", ErrConfig)
	}
	reads, err := readlimit.New(cmp.Or(cfg.MaxConcurrentAuditReads, readlimit.DefaultConcurrency),
		cmp.Or(cfg.AuditReadShare, readlimit.DefaultShare), reg)
	if err != nil {
		return nil, fmt.Errorf("%w: --max-concurrent-audit-reads, --audit-read-share: %w", ErrConfig, err)
	}
	h.reads = reads.UnaryServerInterceptor(authz.AuditReadMethods)
	h.malformed = malformed.New(
		[]protoreflect.ServiceDescriptor{stage4v1.File_stage4_v1_stage4_proto.Services().ByName("Stage4Service")},
		malformed.WithRegisterer(reg), malformed.WithLogger(h.warnings))
	if cfg.RequestReadTimeout < 0 || cfg.ResponseWriteTimeout < 0 {
		return nil, fmt.Errorf("%w: --request-read-timeout and --response-write-timeout must not be negative", ErrConfig)
	}
	h.h2 = h2guard.New(h2guard.WithRequestReadTimeout(cfg.RequestReadTimeout), h2guard.WithResponseWriteTimeout(cfg.ResponseWriteTimeout),
		h2guard.WithStreamWindow(streamWindowBytes), h2guard.WithRegisterer(reg), h2guard.WithLogger(h.warnings))
	budget := cfg.MaxInflightRequestBytes
	if budget == 0 {
		budget = InflightRequestsPerBudget * int64(cfg.MaxMessageBytes)
	}
	h.inflight, err = inflight.New(budget, int64(cfg.MaxMessageBytes), inflight.WithRegisterer(reg),
		inflight.WithAfterBurst((&memoryReleaser{logger: logger}).afterBurst), inflight.WithRequests(requestOf))
	if err != nil {
		return nil, fmt.Errorf("%w: --max-inflight-request-bytes: %w", ErrConfig, err)
	}
	return h, nil
}

// requestOf is the h2guard Stream of a call, as the Limiter sees it.
func requestOf(ctx context.Context) (inflight.Request, bool) {
	if s := h2guard.FromContext(ctx); s != nil {
		return s, true
	}
	return nil, false
}

// credentials wraps the server's transport credentials (nil: plaintext)
// so that h2 follows every connection.
func (h *hardening) credentials(c credentials.TransportCredentials) credentials.TransportCredentials {
	return h.h2.Credentials(c)
}

// serverOptions are the gRPC server options the protections need besides
// their interceptors and credentials.
func (h *hardening) serverOptions() []grpc.ServerOption {
	return append(h.h2.ServerOptions(),
		h.malformed.ServerOption(),
		// Announced to clients in SETTINGS_MAX_HEADER_LIST_SIZE; a header
		// list beyond it is read no further and its stream is reset.
		grpc.MaxHeaderListSize(h.maxHeaderListBytes),
		grpc.StaticStreamWindowSize(streamWindowBytes),
		grpc.StaticConnWindowSize(connWindowBytes),
	)
}
