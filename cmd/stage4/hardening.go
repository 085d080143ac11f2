package main

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/ratelog"
)

// warningInterval is the least time between two log lines of one warning a
// caller can trigger at will (a denied audit read, a malformed request):
// the first is logged at once, the rest are counted into the next line.
const warningInterval = 10 * time.Second

// hardening is what protects the gateway from hostile and careless callers,
// built once per gateway: who may read the audit log, and the rate limit on
// the warnings those callers cause.
type hardening struct {
	warnings *ratelog.Logger
	// authz refuses the audit-reading RPCs to callers not on
	// cfg.auditReaders.
	authz grpc.UnaryServerInterceptor
}

// newHardening builds the gateway's protections from cfg, registering their
// metrics with reg and logging through logger.
func newHardening(cfg gatewayConfig, reg prometheus.Registerer, logger *slog.Logger) *hardening {
	h := &hardening{warnings: ratelog.New(logger, warningInterval)}
	h.authz = authz.UnaryServerInterceptor(cfg.auditReaders, authz.WithRegisterer(reg), authz.WithLogger(h.warnings))
	return h
}
