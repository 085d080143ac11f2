package main

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/reflect/protoreflect"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"

	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/malformed"
	"github.com/stage4/stage4/internal/ratelog"
)

// warningInterval is the least time between two log lines of one warning a
// caller can trigger at will (a denied audit read, a malformed request):
// the first is logged at once, the rest are counted into the next line.
const warningInterval = 10 * time.Second

// hardening is what protects the gateway from hostile and careless callers,
// built once per gateway: who may read the audit log, what a request that
// does not decode gets, and the rate limit on the warnings those callers
// cause.
type hardening struct {
	maxHeaderListBytes uint32
	warnings           *ratelog.Logger
	// authz refuses the audit-reading RPCs to callers not on
	// cfg.auditReaders.
	authz grpc.UnaryServerInterceptor
	// malformed answers Stage4Service requests that do not decode with
	// INVALID_ARGUMENT; its codec is among serverOptions, its interceptor
	// goes into the chain.
	malformed *malformed.Guard
}

// newHardening builds the gateway's protections from cfg, registering their
// metrics with reg and logging through logger.
func newHardening(cfg gatewayConfig, reg prometheus.Registerer, logger *slog.Logger) *hardening {
	h := &hardening{maxHeaderListBytes: defaultMaxHeaderListBytes, warnings: ratelog.New(logger, warningInterval)}
	if cfg.maxHeaderListBytes > 0 {
		h.maxHeaderListBytes = uint32(cfg.maxHeaderListBytes) // serve checked the range
	}
	h.authz = authz.UnaryServerInterceptor(cfg.auditReaders, authz.WithRegisterer(reg), authz.WithLogger(h.warnings))
	h.malformed = malformed.New(
		[]protoreflect.ServiceDescriptor{stage4v1.File_stage4_v1_stage4_proto.Services().ByName("Stage4Service")},
		malformed.WithRegisterer(reg), malformed.WithLogger(h.warnings))
	return h
}

// serverOptions are the gRPC server options the protections need besides
// their interceptors.
func (h *hardening) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		h.malformed.ServerOption(),
		// Announced to clients in SETTINGS_MAX_HEADER_LIST_SIZE; a header
		// list beyond it is read no further and its stream is reset.
		grpc.MaxHeaderListSize(h.maxHeaderListBytes),
	}
}
