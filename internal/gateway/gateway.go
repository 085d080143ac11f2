// Package gateway composes Stage-4: the audit store and log, the Stage-3
// client, the gRPC server with its one interceptor chain, health, metrics
// and graceful shutdown. The stage4 binary, the load tool and tests all run
// the gateway through Run, so that they run the same composition.
package gateway

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"strings"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/stage3watch"
	"github.com/stage4/stage4/internal/witness"
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
	// streamWorkers is how many goroutines gRPC keeps to run calls on. A
	// call on a fresh goroutine grows its stack from a few KiB, copying it
	// at each doubling, because ExecutePlan's stack (the interceptor chain,
	// then protovalidate's recursion) is deeper than a new goroutine's: that
	// was ~10 µs of CPU per call at 64 callers. A worker keeps its grown
	// stack from call to call. Calls beyond this many at once get a
	// goroutine of their own, as without workers. Not more: every
	// collection halves the stacks of idle workers, which then grow again
	// when next used, so workers that are rarely all busy cost more than
	// they save (64 copied fewer stacks than 128 or 256 at 64 callers).
	// grpc.NumStreamWorkers is marked experimental in grpc-go.
	streamWorkers = 64
)

// Config is everything Run needs; serve fills it from flags and the
// environment, dev from its own defaults.
type Config struct {
	// Listen is the host:port of the gRPC server.
	Listen string
	// MetricsListen is the host:port of /metrics; "" turns metrics off.
	MetricsListen string
	// Pprof serves Go's runtime profiles (net/http/pprof) at /debug/pprof/
	// on MetricsListen, for profiling under load. Off by default: profiles
	// show internals and a CPU profile costs CPU while it runs.
	Pprof bool
	// AuditLog is where the audit log lives: a location the audit driver
	// registry resolves (audit.Open): a directory path, or a URL whose
	// scheme names a store (postgres://).
	AuditLog string
	// AuditStore are the operator's settings for the store, whatever its
	// kind (replica name, segment size, beginning a new log); a driver
	// ignores what does not apply to it.
	AuditStore audit.OpenConfig
	// FingerprintKeyFile, when set, holds the key of the keyed
	// fingerprints of tokens and plans, instead of the audit store's own
	// (see FingerprintKey).
	FingerprintKeyFile string
	// AuditSigningKeyFiles hold the note keys that sign the audit log's
	// checkpoints, each checkpoint with all of them (see LoadSigningKeys;
	// two during a key rotation); without any the tree is kept and proofs
	// are served, but no checkpoint is signed.
	AuditSigningKeyFiles []string
	// WitnessPolicyFile, when set, names the witnesses that cosign the
	// checkpoints and their quorum (Sigsum policy format, see package
	// internal/witness): GetCheckpoint then serves only checkpoints that
	// met the quorum. It needs a signing key.
	WitnessPolicyFile string
	// CheckpointInterval is how often, at most, a checkpoint is signed
	// while the log grows; 0 is DefaultCheckpointInterval.
	CheckpointInterval time.Duration
	// Stage3 configures the Stage-3 client.
	Stage3 stage3client.Config
	// Stage3CatalogInterval is how often Stage-3's catalogue of methods
	// is asked for (DescribeMethods), for ValidatePlan and ExecutePlan to
	// check plans against; 0 turns the catalogue off.
	Stage3CatalogInterval time.Duration
	// TLSCertFile and TLSKeyFile are the server's certificate and key;
	// both empty serves plaintext.
	TLSCertFile string
	TLSKeyFile  string
	// TLSClientCAFile, when set, makes clients present a certificate that
	// it signed (mTLS).
	TLSClientCAFile string
	// MaxMessageBytes bounds requests and Stage-3 responses.
	MaxMessageBytes int
	// ShutdownGrace is how long running calls may take to finish on
	// shutdown.
	ShutdownGrace time.Duration
	// Store, when not nil, is used instead of opening AuditLog: tests
	// inject storage faults with it. Run closes it, also when it fails.
	Store audit.Store
	// AuditReaders may call the RPCs that read the audit log; the zero
	// value allows nobody.
	AuditReaders authz.Readers
	// MaxHeaderListBytes bounds the header list of a request; 0 means
	// DefaultMaxHeaderListBytes.
	MaxHeaderListBytes int
	// MaxInflightRequestBytes bounds the request bytes that calls hold at
	// once; 0 means InflightRequestsPerBudget x MaxMessageBytes.
	MaxInflightRequestBytes int64
	// MaxConcurrentAuditReads is how many audit reads (ListAuditEvents,
	// GetCheckpoint, the proofs) run at once; 0 means
	// readlimit.DefaultConcurrency.
	MaxConcurrentAuditReads int
	// AuditReadShare is the share of the time that audit reads may take
	// together, on average; 0 means readlimit.DefaultShare.
	AuditReadShare float64
	// AuditReadMaxScanned is how many records (and index entries) one
	// ListAuditEvents call may scan before its page ends early; 0 means
	// DefaultAuditReadMaxScanned.
	AuditReadMaxScanned int
	// RequestReadTimeout is how long a request may take to arrive whole
	// before its call is cancelled; 0 means
	// h2guard.DefaultRequestReadTimeout.
	RequestReadTimeout time.Duration
	// ResponseWriteTimeout is how long a response may wait for its caller
	// to take it before the connection is closed; 0 means
	// h2guard.DefaultResponseWriteTimeout.
	ResponseWriteTimeout time.Duration
	// TracerProvider records the spans of Stage-4's calls and of its calls
	// to Stage-3 (telemetry.Setup makes it from OTEL_* variables). Nil
	// records none, but trace context still flows from callers to Stage-3.
	TracerProvider trace.TracerProvider
	// AuditOptions are added to audit.New's.
	AuditOptions []audit.Option
	// Revision is the VCS revision stage4_build_info names when the binary
	// has none of Go's own (a container build stamps the binary's with
	// -ldflags -X instead).
	Revision string
	// Stage3CheckInterval is how often Stage-3's reachability is checked
	// (for readiness and stage4_stage3_reachable); 0 is
	// stage3watch.DefaultInterval.
	Stage3CheckInterval time.Duration
	// IdempotencyRetention is how long a request_id is kept after its
	// first call (--idempotency-retention); 0 means
	// audit.DefaultRequestRetention. It must be longer than an execution
	// may run.
	IdempotencyRetention time.Duration
}

// Addrs are the addresses Run actually bound, which differ from the
// configured ones when a port is 0.
type Addrs struct {
	// GRPC is the gRPC listener's address.
	GRPC net.Addr
	// Metrics is the /metrics listener's address, nil when metrics are off.
	Metrics net.Addr
}

// ErrConfig marks errors in the configuration (as opposed to failures
// while running), which the binary reports as a usage error.
var ErrConfig = errors.New("invalid configuration")

// Run runs the Stage-4 gRPC server until ctx is cancelled, then shuts it
// down (see ServeGRPC) and closes Stage-3 and the audit log, in that
// order: the audit log closes last so that every call that was running
// gets its terminal event. ready, if not nil, is called once the server
// accepts calls.
func Run(ctx context.Context, cfg Config, logger *slog.Logger, ready func(Addrs)) (err error) {
	// An injected store is Run's from the start: closed on every path,
	// by the log once it has one.
	store := cfg.Store
	defer func() {
		if store != nil {
			err = errors.Join(err, store.Close())
		}
	}()
	if cfg.Pprof && cfg.MetricsListen == "" {
		return fmt.Errorf("%w: --pprof needs --metrics-listen", ErrConfig)
	}
	creds, err := serverCredentials(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile)
	if err != nil {
		return err
	}
	keys, err := LoadSigningKeys(cfg.AuditSigningKeyFiles)
	if err != nil {
		return err
	}
	var policy *witness.Policy
	if cfg.WitnessPolicyFile != "" {
		if len(keys) == 0 {
			return fmt.Errorf("%w: --witness-policy needs --audit-signing-key: witnesses cosign signed checkpoints", ErrConfig)
		}
		if policy, err = witness.ReadPolicyFile(cfg.WitnessPolicyFile); err != nil {
			return fmt.Errorf("%w: --witness-policy: %w", ErrConfig, err)
		}
	}
	retention, err := requestRetention(cfg)
	if err != nil {
		return err
	}

	// A registry of our own, rather than the global default, so that
	// /metrics holds exactly what this process registered.
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(cfg.Revision),
	)

	// Built before anything opens, so that a wrong limit is refused
	// before the log is created.
	guard, err := newHardening(cfg, reg, logger)
	if err != nil {
		return err
	}

	serviceName := stage4v1.Stage4Service_ServiceDesc.ServiceName
	hs := NewHealth(serviceName)
	readyState := newReadiness(hs, serviceName)

	if store == nil {
		if store, err = OpenStore(ctx, cfg, logger); err != nil {
			return err
		}
	}
	// The witnesses' consistency proofs read the log's stored hashes: the
	// cosigner gets the log once it exists, before its first signing.
	var openLog atomic.Pointer[audit.Log]
	var witnessOpts []audit.Option
	if policy != nil {
		cs, err := newCosigner(policy, &openLog, reg, logger)
		if err != nil {
			return err
		}
		witnessOpts = append(witnessOpts, audit.WithCosigner(cs))
	}
	owned := store
	store = nil // the log owns it now, and closes it also when New fails
	auditLog, err := audit.New(owned, append([]audit.Option{
		audit.WithRegisterer(reg),
		audit.WithLogger(logger),
		// A Stage-3 call ends by its deadline; the margin covers writing
		// the terminal event. Only then may another replica close the
		// execution as interrupted.
		audit.WithOpenFor(cfg.Stage3.EffectiveMaxDeadline() + openForMargin),
		audit.WithCheckpointKeys(keys...),
		audit.WithMaxScanned(cmp.Or(cfg.AuditReadMaxScanned, DefaultAuditReadMaxScanned)),
		// While the store cannot record, ExecutePlan refuses every plan
		// (fail closed); NOT_SERVING tells load balancers to send them
		// elsewhere. A store that recovers (a database back online) turns
		// SERVING again; a failed file never does. The log starts
		// healthy and reports every change, so readiness's initial nil
		// is right.
		audit.WithHealthFunc(func(err error) {
			if err != nil {
				logger.Error("audit store unavailable; refusing plans", "error", err)
			} else {
				logger.Info("audit store available again; accepting plans")
			}
			readyState.setAudit(err)
		}),
	}, append(witnessOpts, cfg.AuditOptions...)...)...)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	openLog.Store(auditLog)
	defer func() {
		if cerr := auditLog.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close audit log: %w", cerr))
		}
	}()
	// Deferred after the log's Close, so run before it: the last
	// checkpoint covers every call's terminal event.
	stopCheckpoints, err := startCheckpoints(auditLog, keys, policy != nil, cfg.CheckpointInterval, reg, logger)
	if err != nil {
		return err
	}
	defer stopCheckpoints()
	defer startRequestPurges(auditLog, retention, logger)()

	tp := cfg.TracerProvider
	// Stage-3 call latency by code, measured on the client side; its span
	// is a child of the ExecutePlan span, and OpenTelemetry's propagator
	// writes the trace context into the call's metadata. Without tracing
	// there is no span, and only the propagator runs (see tracingOptions).
	clientMetrics := grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram())
	reg.MustRegister(clientMetrics)
	stage3, err := stage3client.New(cfg.Stage3, append(clientTracingOptions(tp),
		grpc.WithChainUnaryInterceptor(planCallsOnly(clientMetrics.UnaryClientInterceptor())))...)
	if err != nil {
		return fmt.Errorf("stage3 client: %w", err)
	}
	defer func() {
		if cerr := stage3.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close stage3 client: %w", cerr))
		}
	}()
	// Stage-3 is checked now, so that a TLS mismatch or a mistyped
	// address is in the log before the first plan fails on it, and then
	// every few seconds: while it does not answer, readiness is
	// NOT_SERVING (liveness is not: a restart cannot bring Stage-3 back).
	// Deferred after the client's Close, so stopped before it.
	watcher := stage3watch.New(stage3, cfg.Stage3, stage3watch.WithLogger(logger), stage3watch.WithRegisterer(reg),
		stage3watch.WithInterval(cfg.Stage3CheckInterval), stage3watch.WithOnChange(readyState.setStage3))
	if err := watcher.Start(); err != nil {
		return fmt.Errorf("stage3 watcher: %w", err)
	}
	defer watcher.Stop()

	// Stage-3's catalogue (catalog.go). Stopped before the client closes.
	validator, stopCatalog, err := startCatalog(ctx, cfg.Stage3CatalogInterval, stage3, reg, logger)
	if err != nil {
		return err
	}
	defer stopCatalog()

	key, err := FingerprintKey(ctx, owned, cfg)
	if err != nil {
		return err
	}
	fp := server.NewFingerprinter(key)
	// abort ends the calls still running when the shutdown grace period
	// is over, with OUTCOME_UNKNOWN rather than a dropped connection.
	abortCtx, abort := context.WithCancel(context.Background())
	defer abort()

	serverMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(serverMetrics)
	callLog := NewCallLog(logger)
	if err := callLog.Register(reg); err != nil {
		return fmt.Errorf("register call metrics: %w", err)
	}
	// Deferred last but one, so run once every call has ended: the counts
	// of call log lines that the rate limit held back go out before exit.
	defer callLog.Flush()
	defer guard.warnings.Flush()
	srv := grpc.NewServer(serverOptions(cfg, creds, logger, callLog, tp, server.AuditInterceptor(auditLog,
		func(req *stage4v1.ExecutePlanRequest) error { return validator.Validate(req) }, fp,
		server.WithAbort(abortCtx), server.WithRequestRetention(retention),
		server.WithKeyObserver(keyOutcomeCounter(reg))), serverMetrics, guard)...)
	// Until ServeGRPC owns it: NewServer starts the stream workers, which
	// an early return would leave running.
	serving := false
	defer func() {
		if !serving {
			srv.Stop()
		}
	}()
	stage4v1.RegisterStage4ServiceServer(guard.inflight.Registrar(srv), server.New(stage3, auditLog, fp, server.WithValidator(validator)))
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	serverMetrics.InitializeMetrics(srv)

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	addrs := Addrs{GRPC: lis.Addr()}

	if cfg.MetricsListen != "" {
		stopMetrics, maddr, err := serveMetrics(cfg.MetricsListen, reg, cfg.Pprof, logger)
		if err != nil {
			lis.Close()
			return err
		}
		defer stopMetrics()
		addrs.Metrics = maddr
	}

	readyState.setListening()
	// Liveness says only that the process serves: an audit store that can
	// recover (a database) must not get the pod restarted while it is
	// down, since a restart cannot help and kills the calls in flight.
	hs.SetServingStatus(LivenessService, healthpb.HealthCheckResponse_SERVING)
	// Operators and tests read the bound addresses from this line when a
	// port was 0.
	metricsAddr := ""
	if addrs.Metrics != nil {
		metricsAddr = addrs.Metrics.String()
	}
	logger.Info("serving", "grpc_addr", addrs.GRPC.String(), "metrics_addr", metricsAddr,
		"tls", creds != nil, "stage3_addr", cfg.Stage3.Target, "audit_log", audit.RedactLocation(cfg.AuditLog))
	if ready != nil {
		ready(addrs)
	}
	serving = true
	return ServeGRPC(ctx, srv, hs, lis, cfg.ShutdownGrace, logger, abort)
}

// LivenessService is the grpc.health.v1 service name of a liveness probe:
// SERVING from start to shutdown, whatever the audit store's or Stage-3's
// state. The overall status ("") and stage4.v1.Stage4Service are
// NOT_SERVING also while the audit store cannot record or Stage-3 does not
// answer (see readiness), for readiness probes and for liveness where a
// restart is the recovery (a failed log file).
const LivenessService = "liveness"

// openForMargin is how long after its Stage-3 deadline an execution may
// still be writing its terminal event.
const openForMargin = 30 * time.Second

// serverOptions are the gRPC server options of Stage-4: the interceptor
// chains, limits, keepalive policy and, when configured, TLS.
func serverOptions(cfg Config, creds credentials.TransportCredentials, logger *slog.Logger, callLog *CallLog, tp trace.TracerProvider, auditInterceptor grpc.UnaryServerInterceptor, serverMetrics *grpcprom.ServerMetrics, guard *hardening) []grpc.ServerOption {
	callLogger := gatewayCallLogger(logger)
	recoveryOpt := recovery.WithRecoveryHandlerContext(RecoveredPanic(logger))

	opts := append(serverTracingOptions(tp), []grpc.ServerOption{
		// The one interceptor chain, outermost first (after the trace
		// context's, see serverTracingOptions):
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
		//  6. reads makes the audit reads that authz let through take
		//     turns and a share of the time (a denied caller takes none);
		//  7. audit is innermost, next to the handler: it validates the
		//     plan and makes PLAN_RECEIVED and EXECUTION_STARTED durable
		//     before the handler may call Stage-3, then records the
		//     terminal event from the handler's own result.
		grpc.ChainUnaryInterceptor(
			callLog.UnaryServerInterceptor(),
			serverMetrics.UnaryServerInterceptor(),
			recovery.UnaryServerInterceptor(recoveryOpt),
			guard.malformed.UnaryServerInterceptor(),
			guard.authz,
			guard.reads,
			auditInterceptor,
		),
		// Streams (health Watch, reflection) are not audited: they carry no
		// plans.
		grpc.ChainStreamInterceptor(
			logging.StreamServerInterceptor(callLogger, GatewayCallLogOptions...),
			serverMetrics.StreamServerInterceptor(),
			recovery.StreamServerInterceptor(recoveryOpt),
		),
		// Stop (the fallback after the grace period) cancels running calls;
		// waiting for their handlers to return lets each record its
		// terminal audit event before the log is closed.
		grpc.WaitForHandlers(true),
		grpc.MaxRecvMsgSize(cfg.MaxMessageBytes),
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		grpc.NumStreamWorkers(streamWorkers),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             keepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: maxConnectionIdle,
			Time:              keepaliveTime,
			Timeout:           keepaliveTimeout,
		}),
	}...)
	opts = append(opts, guard.serverOptions()...)
	// Plaintext too: the guard wraps every connection after its handshake.
	return append(opts, grpc.Creds(guard.credentials(creds)))
}

// serveMetrics serves reg at /metrics on addr in the background, and with
// pprof Go's runtime profiles at /debug/pprof/. stop shuts the listener
// down, waiting briefly for a scrape in progress.
func serveMetrics(addr string, reg *prometheus.Registry, pprof bool, logger *slog.Logger) (stop func(), bound net.Addr, err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if pprof {
		// On this mux only: importing net/http/pprof for its side effect
		// would register the handlers on http.DefaultServeMux.
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", redactedCmdline)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
	}
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

// redactedCmdline is pprof's /debug/pprof/cmdline with anything in the
// arguments that may be a password hidden: --audit-log may be a
// postgres:// URL with one, and the profiles are for whoever debugs the
// process, not for the database's secrets.
func redactedCmdline(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	args := make([]string, len(os.Args))
	for i, a := range os.Args {
		if name, value, ok := strings.Cut(a, "="); ok && strings.HasPrefix(name, "-") {
			args[i] = name + "=" + audit.RedactLocation(value)
			continue
		}
		args[i] = audit.RedactLocation(a)
	}
	_, _ = io.WriteString(w, strings.Join(args, "\x00"))
}

// serverCredentials returns TLS credentials for the gRPC server, or nil for
// plaintext when no certificate is configured. A client CA file turns on
// mutual TLS: clients must present a certificate that it signed.
func serverCredentials(certFile, keyFile, clientCAFile string) (credentials.TransportCredentials, error) {
	if certFile == "" && keyFile == "" {
		if clientCAFile != "" {
			return nil, fmt.Errorf("%w: --tls-client-ca-file needs --tls-cert-file and --tls-key-file", ErrConfig)
		}
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("%w: --tls-cert-file and --tls-key-file go together", ErrConfig)
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
