package gateway_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/stage3client"
)

// waitTimeout bounds every wait of these tests; nothing waits on a timer
// for anything to happen.
const waitTimeout = 60 * time.Second

// runningGateway is a gateway.Run in this process.
type runningGateway struct {
	addrs  gateway.Addrs
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// stop shuts the gateway down and returns Run's error; it may be called
// more than once.
func (g *runningGateway) stop() error {
	g.once.Do(func() {
		g.cancel()
		g.err = <-g.done
	})
	return g.err
}

// startGateway runs the gateway with cfg, filling in loopback addresses,
// a log directory and limits where cfg leaves them empty, and stops it at the
// end of the test.
func startGateway(t *testing.T, cfg gateway.Config) *runningGateway {
	t.Helper()
	return startGatewayLogging(t, cfg, slog.New(slog.DiscardHandler))
}

// startGatewayLogging is startGateway with the gateway's log going to
// logger.
func startGatewayLogging(t *testing.T, cfg gateway.Config, logger *slog.Logger) *runningGateway {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.AuditLog == "" && cfg.Store == nil {
		cfg.AuditLog = filepath.Join(t.TempDir(), "audit") // a log directory
	}
	if !cfg.AuditReaders.AllowsAnyone() && len(cfg.AuditReaders.Identities()) == 0 {
		// These tests read the log through ListAuditEvents; who may is
		// internal/authz's and cmd/stage4's tests' concern.
		cfg.AuditReaders = authz.Everyone()
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = stage3client.DefaultMaxMessageBytes
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &runningGateway{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan gateway.Addrs, 1)
	go func() {
		g.done <- gateway.Run(ctx, cfg, logger, func(a gateway.Addrs) { ready <- a })
	}()
	select {
	case g.addrs = <-ready:
	case err := <-g.done:
		cancel()
		t.Fatalf("gateway ended before it was ready: %v", err)
	case <-time.After(waitTimeout):
		cancel()
		t.Fatal("gateway not ready in time")
	}
	t.Cleanup(func() { _ = g.stop() })
	return g
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}
