package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"math"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/h2guard"
	"github.com/stage4/stage4/internal/readlimit"
	"github.com/stage4/stage4/internal/telemetry"
	"github.com/stage4/stage4/stage3client"
)

// Defaults of serve, documented in its usage text.
const (
	defaultListen            = "127.0.0.1:8080"
	defaultMetricsListen     = "127.0.0.1:9090"
	defaultAuditLog          = "stage4-audit"
	defaultAuditSegmentBytes = segstore.DefaultSegmentBytes
	minAuditSegmentBytes     = 1 << 20
	defaultMaxDeadline       = stage3client.DefaultMaxDeadline
	defaultMaxMessageBytes   = stage3client.DefaultMaxMessageBytes
	defaultShutdownGrace     = 15 * time.Second
)

const serveUsage = `Usage: stage4 serve --stage3-addr HOST:PORT [flags]

Runs the production Stage-4 gRPC server: stage4.v1.Stage4Service, gRPC
health (grpc.health.v1) and server reflection. Plans go to the Stage-3 at
--stage3-addr over TLS (or plaintext with --stage3-insecure); there is no
fallback to the reference Stage-3. Logs go to stderr: one line per
finished call that failed, and per successful call only at --log-level
debug (the audit log and the metrics record every call), never with
request payloads or error messages.

Prometheus metrics are served at http://METRICS-LISTEN/metrics; an empty
--metrics-listen turns them off.

SIGINT or SIGTERM shuts down gracefully: health turns NOT_SERVING, new calls
are refused, running calls get --shutdown-grace to finish (and write their
terminal audit event), then the audit log is closed and stage4 exits 0.

Every flag not given on the command line falls back to an environment
variable: STAGE4_ and the flag name in upper snake case, for example
STAGE4_STAGE3_ADDR or STAGE4_LISTEN. Flags win over the environment.
`

// serveFlags holds serve's flag values.
type serveFlags struct {
	gateway gateway.Config
	log     logFlags
}

// newServeFlags declares serve's flags; their names are a public interface.
func newServeFlags() (*flag.FlagSet, *serveFlags) {
	fs := newFlagSet("serve", serveUsage)
	f := &serveFlags{}
	g := &f.gateway
	fs.StringVar(&g.Listen, "listen", defaultListen, "`host:port` of the gRPC server")
	fs.StringVar(&g.MetricsListen, "metrics-listen", defaultMetricsListen, "`host:port` of the Prometheus /metrics endpoint; empty turns it off")
	fs.BoolVar(&g.Pprof, "pprof", false, "also serve Go's runtime profiles at /debug/pprof/ on --metrics-listen, for profiling;\nthey show internals, so keep it off where others can reach that address")
	fs.StringVar(&g.AuditLog, "audit-log", defaultAuditLog, "where the audit log lives: the `path` of a directory of segment files (created when missing;\na name with a colon is written ./name), or a postgres:// URL shared by several replicas")
	fs.Int64Var(&g.AuditStore.SegmentBytes, "audit-segment-bytes", defaultAuditSegmentBytes, "`bytes` at which a segment of the audit log directory is sealed and the next one begins\n(1048576, 1 MiB, to 2147483648, 2 GiB); ignored for a postgres:// URL")
	fs.StringVar(&g.AuditStore.ReplicaName, "replica-name", "", "`name` of this replica on a PostgreSQL audit store; the host name when empty")
	fs.BoolVar(&g.AuditStore.NewLog, "audit-new-log", false, "begin a new audit log although the last one lost records (removed, renamed,\ntruncated): without it, serve refuses to start; give it once, not for good")
	fs.StringVar(&g.FingerprintKeyFile, "fingerprint-key-file", "", "`file` holding the secret key (at least 32 bytes, mode 0600) of the keyed fingerprints\nof tokens and plans; when empty, the audit store's own key (<audit-log>/key in a log directory,\na table in PostgreSQL)")
	fs.Var((*fileList)(&g.AuditSigningKeyFiles), "audit-signing-key", "`file` holding the note private key (PRIVATE+KEY+..., from stage4 audit keygen, mode 0600) that\nsigns the audit log's checkpoints; when none, the tree is kept and proofs served, but nothing is signed.\nRepeatable (or comma-separated): every checkpoint is signed by each key, the old and the new one\nduring a key rotation; the first signing pins the keys in the audit store, which then refuses others")
	fs.StringVar(&g.WitnessPolicyFile, "witness-policy", "", "`file` naming the witnesses that cosign the audit checkpoints and their quorum (Sigsum policy format:\nwitness NAME PUBKEY-HEX URL, group NAME K|all|any MEMBER..., quorum NAME); GetCheckpoint then serves only\ncosigned checkpoints. Needs --audit-signing-key")
	fs.DurationVar(&g.CheckpointInterval, "checkpoint-interval", gateway.DefaultCheckpointInterval, "how often, at most, a checkpoint is signed while the audit log grows (and once at shutdown)")
	fs.IntVar(&g.MaxMessageBytes, "max-message-bytes", defaultMaxMessageBytes, "largest request and Stage-3 response accepted, in `bytes`")
	fs.IntVar(&g.MaxHeaderListBytes, "max-header-list-bytes", gateway.DefaultMaxHeaderListBytes, "largest header list (all metadata) of a request, in `bytes`; a larger one is refused before any handler runs")
	fs.Int64Var(&g.MaxInflightRequestBytes, "max-inflight-request-bytes", 0, "request `bytes` that calls may hold at once (0: 8 x --max-message-bytes); a call counts 16 x its request's declared\nlength, at most --max-message-bytes, from when its request has arrived (or begins to be read, when larger\nthan 64 KiB) until it ends, and waits while the budget, or its connection's fair share, is spent")
	fs.DurationVar(&g.RequestReadTimeout, "request-read-timeout", h2guard.DefaultRequestReadTimeout, "how long a request may take to arrive whole (from the call's start, or from when a request\nlarger than 64 KiB begins to be read); a later one's call ends with DEADLINE_EXCEEDED")
	fs.DurationVar(&g.ResponseWriteTimeout, "response-write-timeout", h2guard.DefaultResponseWriteTimeout, "how long a response may wait for its caller to take it; past it the connection is closed\n(GOAWAY ENHANCE_YOUR_CALM) and its other calls fail with UNAVAILABLE")
	fs.Var(&g.AuditReaders, "audit-readers", "comma-separated `identities` that may read the audit log: URI SANs (SPIFFE IDs) or DNS SANs of client certificates verified with --tls-client-ca-file, or * for every caller (a mesh that enforces its own policy); empty denies everyone")
	fs.IntVar(&g.MaxConcurrentAuditReads, "max-concurrent-audit-reads", readlimit.DefaultConcurrency, "how many audit reads (ListAuditEvents, GetCheckpoint, the proofs) run at once;\nthe others wait their turn until their deadline (at most 30s), then get RESOURCE_EXHAUSTED")
	fs.Float64Var(&g.AuditReadShare, "audit-read-share", readlimit.DefaultShare, "`share` of the time (0.2: a fifth of a second each second) that audit reads may take together,\non average, so that they cannot starve executions; each read is charged the time it took")
	fs.IntVar(&g.AuditReadMaxScanned, "audit-read-max-scanned", gateway.DefaultAuditReadMaxScanned, "`records` (and index entries) one ListAuditEvents call may scan; past it its page ends early,\nwith a next_page_token to go on from")
	fs.DurationVar(&g.ShutdownGrace, "shutdown-grace", defaultShutdownGrace, "how long running calls may take to finish on shutdown")
	fs.DurationVar(&g.IdempotencyRetention, "idempotency-retention", audit.DefaultRequestRetention, "how long an ExecutePlan request_id is kept after its first call (at least 1h): a retry within it\ngets the first call's answer and never executes the plan again; after it the key is forgotten and purged")
	fs.StringVar(&g.TLSCertFile, "tls-cert-file", "", "server certificate `file` (PEM); serves plaintext when empty")
	fs.StringVar(&g.TLSKeyFile, "tls-key-file", "", "server private key `file` (PEM)")
	fs.StringVar(&g.TLSClientCAFile, "tls-client-ca-file", "", "CA `file` (PEM); when set, clients must present a certificate it signed (mTLS)")

	s3 := &g.Stage3
	fs.StringVar(&s3.Target, "stage3-addr", "", "`host:port` (or gRPC target) of the Stage-3 executor; required")
	fs.BoolVar(&s3.Insecure, "stage3-insecure", false, "talk to Stage-3 in plaintext (only on a trusted network)")
	fs.StringVar(&s3.CAFile, "stage3-ca-file", "", "CA `file` (PEM) that signed Stage-3's certificate; system roots when empty")
	fs.StringVar(&s3.CertFile, "stage3-cert-file", "", "client certificate `file` (PEM) for mTLS to Stage-3")
	fs.StringVar(&s3.KeyFile, "stage3-key-file", "", "client private key `file` (PEM) for mTLS to Stage-3")
	fs.StringVar(&s3.ServerName, "stage3-server-name", "", "`name` to verify Stage-3's certificate against; the host of --stage3-addr when empty")
	fs.DurationVar(&s3.MaxDeadline, "stage3-max-deadline", defaultMaxDeadline, "upper bound of the deadline of one Stage-3 call")
	fs.DurationVar(&g.Stage3CatalogInterval, "stage3-catalog-interval", gateway.DefaultCatalogInterval, "how often Stage-3 is asked for its catalogue of methods (DescribeMethods, also once at start),\nwhich ValidatePlan and ExecutePlan check plans against when Stage-3 offers it; 0 turns it off")

	fs.StringVar(&f.log.level, "log-level", "info", "least severe `level` logged: debug, info, warn or error")
	fs.StringVar(&f.log.format, "log-format", "json", "log `format`: json or text")
	return fs, f
}

// runServe is the serve command.
func runServe(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs, f := newServeFlags()
	if err := parseFlags(fs, args, stderr, true); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("serve: unexpected arguments %q", fs.Args())
	}
	if f.gateway.Stage3.Target == "" {
		return usageError("serve: --stage3-addr (or STAGE4_STAGE3_ADDR) is required: the address of the Stage-3 executor")
	}
	if f.gateway.MaxMessageBytes <= 0 {
		return usageError("serve: --max-message-bytes must be positive")
	}
	if f.gateway.MaxHeaderListBytes <= 0 || f.gateway.MaxHeaderListBytes > math.MaxUint32 {
		return usageError("serve: --max-header-list-bytes must be positive and below 4 GiB")
	}
	if b := f.gateway.MaxInflightRequestBytes; b < 0 || (b > 0 && b < int64(f.gateway.MaxMessageBytes)) {
		return usageError("serve: --max-inflight-request-bytes must be 0 (the default) or at least --max-message-bytes")
	}
	if f.gateway.RequestReadTimeout <= 0 || f.gateway.ResponseWriteTimeout <= 0 {
		return usageError("serve: --request-read-timeout and --response-write-timeout must be positive")
	}
	if g := f.gateway; g.MaxConcurrentAuditReads < 1 || g.AuditReadMaxScanned < 1 || !(g.AuditReadShare > 0 && g.AuditReadShare <= float64(g.MaxConcurrentAuditReads)) {
		return usageError("serve: --max-concurrent-audit-reads and --audit-read-max-scanned must be at least 1, and --audit-read-share above 0 and at most --max-concurrent-audit-reads")
	}
	if len(f.gateway.AuditReaders.Identities()) > 0 && f.gateway.TLSClientCAFile == "" {
		return usageError("serve: --audit-readers names identities, which only verified client certificates carry: it needs --tls-client-ca-file (or * behind a mesh)")
	}
	if f.gateway.Stage3CatalogInterval < 0 {
		return usageError("serve: --stage3-catalog-interval must not be negative (0 turns the catalogue off)")
	}
	if f.gateway.CheckpointInterval <= 0 {
		return usageError("serve: --checkpoint-interval must be positive")
	}
	if err := checkAuditSegmentBytes("serve", f.gateway.AuditStore.SegmentBytes); err != nil {
		return err
	}
	if f.gateway.IdempotencyRetention < audit.MinRequestRetention {
		return usageError("serve: --idempotency-retention is %v; it must be at least %v (AIP-155)", f.gateway.IdempotencyRetention, audit.MinRequestRetention)
	}
	f.gateway.Stage3.MaxMessageBytes = f.gateway.MaxMessageBytes
	f.gateway.Revision = revision
	logger, err := newLogger(stderr, f.log)
	if err != nil {
		return err
	}
	return withTracing(ctx, logger, func(tp trace.TracerProvider) error {
		f.gateway.TracerProvider = tp
		return gateway.Run(ctx, f.gateway, logger, nil)
	})
}

// checkAuditSegmentBytes refuses a segment size below a mebibyte, where
// smaller segments would mean a seal, and a file, every few hundred
// records, or above segstore.MaxSegmentBytes (2 GiB), past which the
// index could not address a record.
func checkAuditSegmentBytes(cmd string, n int64) error {
	if n < minAuditSegmentBytes || n > segstore.MaxSegmentBytes {
		return usageError("%s: --audit-segment-bytes is %d; it must be between %d (1 MiB) and %d (2 GiB)", cmd, n, minAuditSegmentBytes, int64(segstore.MaxSegmentBytes))
	}
	return nil
}

// withTracing runs serve with the tracer provider that the OTEL_*
// environment configures, and flushes its spans afterwards.
func withTracing(ctx context.Context, logger *slog.Logger, serve func(trace.TracerProvider) error) error {
	tp, shutdown, err := telemetry.Setup(ctx)
	if err != nil {
		return err
	}
	if telemetry.Enabled() {
		logger.Info("tracing with OpenTelemetry (OTEL_* environment)")
	}
	err = serve(tp)
	flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tracingFlushTimeout)
	defer cancel()
	if ferr := shutdown(flushCtx); ferr != nil {
		logger.Warn("flushing traces failed", "error", ferr)
	}
	return err
}

// tracingFlushTimeout bounds the export of the last spans at exit.
const tracingFlushTimeout = 5 * time.Second

// fileList is a repeatable flag of file paths: each use adds one, and a
// comma separates several in one value (an environment variable).
type fileList []string

func (l *fileList) String() string { return strings.Join(*l, ",") }

// Set adds the paths in v.
func (l *fileList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// Get returns the paths, for flag.Getter.
func (l *fileList) Get() any { return []string(*l) }
