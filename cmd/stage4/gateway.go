package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/server"
	"github.com/stage4/stage4/stage3client"
)

// Server limits that are not worth a flag.
const (
	// maxConcurrentStreams bounds the calls one connection may have open, so
	// that a single client cannot take every handler goroutine.
	maxConcurrentStreams = 1024
	// keepaliveMinTime is the most frequent client ping the server accepts.
	// 5s tolerates the pings of service-mesh sidecars (Envoy, Linkerd) that
	// would otherwise get their connections closed with ENHANCE_YOUR_CALM.
	keepaliveMinTime = 5 * time.Second
	// maxConnectionIdle closes connections without calls for this long, so
	// that idle clients do not hold server resources forever.
	maxConnectionIdle = 5 * time.Minute
	// keepaliveTime and keepaliveTimeout make the server ping quiet
	// connections and drop peers that vanished without closing.
	keepaliveTime    = 1 * time.Minute
	keepaliveTimeout = 20 * time.Second
	// metricsShutdownTimeout bounds the wait for an in-progress scrape.
	metricsShutdownTimeout = 5 * time.Second
)

// gatewayConfig is everything runGateway needs; serve fills it from flags
// and the environment, dev from its own defaults.
type gatewayConfig struct {
	listen          string // host:port of the gRPC server
	metricsListen   string // host:port of /metrics; "" turns metrics off
	auditLog        string // path of the audit log file
	stage3          stage3client.Config
	tlsCertFile     string // server certificate; "" serves plaintext
	tlsKeyFile      string
	tlsClientCAFile string // when set, clients must present a cert it signed
	maxMessageBytes int
	shutdownGrace   time.Duration
	// auditReaders may call the RPCs that read the audit log; the zero
	// value allows nobody.
	auditReaders authz.Readers
	// maxHeaderListBytes bounds the header list of a request; 0 means
	// defaultMaxHeaderListBytes.
	maxHeaderListBytes int
	// maxInflightRequestBytes bounds the request bytes that calls hold
	// together; 0 means inflightRequestsPerBudget maximum-size requests.
	maxInflightRequestBytes int64
	// auditOptions are added to audit.Open's; tests inject storage faults
	// with them.
	auditOptions []audit.Option
}

// gatewayAddrs are the addresses runGateway actually bound, which differ
// from the configured ones when a port is 0.
type gatewayAddrs struct {
	grpc    net.Addr
	metrics net.Addr // nil when metrics are off
}

// runGateway runs the Stage-4 gRPC server until ctx is cancelled, then
// shuts it down (see serveGRPC) and closes Stage-3 and the audit log, in
// that order: the audit log closes last so that every call that was
// running gets its terminal event. ready, if not nil, is called once the
// server accepts calls.
func runGateway(ctx context.Context, cfg gatewayConfig, logger *slog.Logger, ready func(gatewayAddrs)) (err error) {
	creds, err := serverCredentials(cfg.tlsCertFile, cfg.tlsKeyFile, cfg.tlsClientCAFile)
	if err != nil {
		return err
	}

	// A registry of our own, rather than the global default, so that
	// /metrics holds exactly what this process registered.
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	serviceName := stage4v1.Stage4Service_ServiceDesc.ServiceName
	hs := newHealth(serviceName)

	auditLog, err := audit.Open(cfg.auditLog, append([]audit.Option{
		audit.WithRegisterer(reg),
		// Once the log cannot record, ExecutePlan refuses every plan (fail
		// closed); NOT_SERVING tells load balancers to send them elsewhere.
		audit.WithOnFailure(func(err error) {
			logger.Error("audit log failed; refusing plans until restarted", "error", err)
			setHealth(hs, healthpb.HealthCheckResponse_NOT_SERVING, serviceName)
		}),
	}, cfg.auditOptions...)...)
	if err != nil {
		return err // already says "open audit log"
	}
	if rec := auditLog.Recovery(); rec.TruncatedBytes > 0 || len(rec.Interrupted) > 0 {
		logger.Warn("audit log repaired after an unclean stop",
			"truncated_bytes", rec.TruncatedBytes, "interrupted_executions", rec.Interrupted)
	}
	defer func() {
		if cerr := auditLog.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close audit log: %w", cerr))
		}
	}()

	// Stage-3 call latency by code, measured on the client side.
	clientMetrics := grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram())
	reg.MustRegister(clientMetrics)
	stage3, err := stage3client.New(cfg.stage3, grpc.WithChainUnaryInterceptor(clientMetrics.UnaryClientInterceptor()))
	if err != nil {
		return fmt.Errorf("stage3 client: %w", err)
	}
	defer func() {
		if cerr := stage3.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close stage3 client: %w", cerr))
		}
	}()

	serverMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(serverMetrics)
	guard, err := newHardening(cfg, reg, logger)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(serverOptions(cfg, creds, logger, auditLog, serverMetrics, guard)...)
	stage4v1.RegisterStage4ServiceServer(guard.inflight.Registrar(srv), server.New(stage3, auditLog))
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	serverMetrics.InitializeMetrics(srv)

	lis, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	addrs := gatewayAddrs{grpc: lis.Addr()}

	if cfg.metricsListen != "" {
		stopMetrics, maddr, err := serveMetrics(cfg.metricsListen, reg, logger)
		if err != nil {
			lis.Close()
			return err
		}
		defer stopMetrics()
		addrs.metrics = maddr
	}

	setHealth(hs, healthpb.HealthCheckResponse_SERVING, serviceName)
	// Operators and tests read the bound addresses from this line when a
	// port was 0.
	metricsAddr := ""
	if addrs.metrics != nil {
		metricsAddr = addrs.metrics.String()
	}
	logger.Info("serving", "grpc_addr", addrs.grpc.String(), "metrics_addr", metricsAddr,
		"tls", creds != nil, "stage3_addr", cfg.stage3.Target, "audit_log", cfg.auditLog)
	if ready != nil {
		ready(addrs)
	}
	return serveGRPC(ctx, srv, hs, lis, cfg.shutdownGrace, logger)
}

// serverOptions are the gRPC server options of Stage-4: the interceptor
// chains, limits, keepalive policy and, when configured, TLS.
func serverOptions(cfg gatewayConfig, creds credentials.TransportCredentials, logger *slog.Logger, auditLog *audit.Log, serverMetrics *grpcprom.ServerMetrics, guard *hardening) []grpc.ServerOption {
	callLogger := grpcLogger(logger)
	recoveryOpt := recovery.WithRecoveryHandlerContext(recoveredPanic(logger))

	opts := []grpc.ServerOption{
		// The one interceptor chain, outermost first:
		//  1. logging sees every call, including those refused further in,
		//     with its final code and total duration;
		//  2. metrics likewise count every call by its final code;
		//  3. recovery sits inside both so that they record the INTERNAL it
		//     makes of a panic, and outside audit so that a panic in audit
		//     or the handler is caught too;
		//  4. malformed refuses requests that did not decode (its codec let
		//     them through empty), before anything reads them;
		//  5. authz refuses audit reads to callers not on --audit-readers,
		//     inside logging and metrics so that denials show in both;
		//  6. audit is innermost, next to the handler: it validates the
		//     plan and makes PLAN_RECEIVED and EXECUTION_STARTED durable
		//     before the handler may call Stage-3, then records the
		//     terminal event from the handler's own result.
		grpc.ChainUnaryInterceptor(
			logging.UnaryServerInterceptor(callLogger, gatewayCallLogOptions...),
			serverMetrics.UnaryServerInterceptor(),
			recovery.UnaryServerInterceptor(recoveryOpt),
			guard.malformed.UnaryServerInterceptor(),
			guard.authz,
			audit.UnaryServerInterceptor(auditLog,
				audit.WithValidator(func(req *stage4v1.ExecutePlanRequest) error { return server.Validate(req) }),
				audit.WithPlanID(server.PlanID),
			),
		),
		// Streams (health Watch, reflection) are not audited: they carry no
		// plans.
		grpc.ChainStreamInterceptor(
			logging.StreamServerInterceptor(callLogger, gatewayCallLogOptions...),
			serverMetrics.StreamServerInterceptor(),
			recovery.StreamServerInterceptor(recoveryOpt),
		),
		// Stop (the fallback after the grace period) cancels running calls;
		// waiting for their handlers to return lets each record its
		// terminal audit event before the log is closed.
		grpc.WaitForHandlers(true),
		grpc.MaxRecvMsgSize(cfg.maxMessageBytes),
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             keepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: maxConnectionIdle,
			Time:              keepaliveTime,
			Timeout:           keepaliveTimeout,
		}),
	}
	opts = append(opts, guard.serverOptions()...)
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	return opts
}

// serveMetrics serves reg at /metrics on addr in the background. stop shuts
// the listener down, waiting briefly for a scrape in progress.
func serveMetrics(addr string, reg *prometheus.Registry, logger *slog.Logger) (stop func(), bound net.Addr, err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hsrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server failed", "error", err)
		}
	}()
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), metricsShutdownTimeout)
		defer cancel()
		if err := hsrv.Shutdown(ctx); err != nil {
			hsrv.Close()
		}
		<-done
	}
	return stop, lis.Addr(), nil
}

// serverCredentials returns TLS credentials for the gRPC server, or nil for
// plaintext when no certificate is configured. A client CA file turns on
// mutual TLS: clients must present a certificate that it signed.
func serverCredentials(certFile, keyFile, clientCAFile string) (credentials.TransportCredentials, error) {
	if certFile == "" && keyFile == "" {
		if clientCAFile != "" {
			return nil, usageError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
		}
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, usageError("--tls-cert-file and --tls-key-file go together")
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("read client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read client ca: no PEM certificates in %s", clientCAFile)
		}
		conf.ClientCAs = pool
		conf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(conf), nil
}
