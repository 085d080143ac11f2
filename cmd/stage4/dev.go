package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"go.opentelemetry.io/otel/trace"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

const devUsage = `Usage: stage4 dev [flags]

Runs Stage-4 and the reference Stage-3 together on loopback, for trying
Stage-4 out (make run). Stage-4 is the same server as "stage4 serve", in
plaintext, talking to the in-process reference Stage-3. The audit log lives
in the system temp folder by default ($TMPDIR/stage4-dev-USER/audit, one per
user), a directory of 1 MiB segment files, and survives restarts: the chain
simply continues; --audit-log elsewhere (a new folder) starts another. It
prints the addresses, the audit-log path and grpcurl commands to paste, then
runs until SIGINT or SIGTERM. Logs go to stderr, as text: one line per call
(the reference Stage-3's), and Stage-4's for failed calls.
`

// devFlags holds dev's flag values.
type devFlags struct {
	listen        string
	stage3Listen  string
	metricsListen string
	auditLog      string
	segmentBytes  int64
	newAuditLog   bool
	log           logFlags
}

// defaultDevAuditLog is outside the source tree so that make run never
// leaves files for git to see, and one per user, so that two people on one
// machine do not share (or fail on) one folder: $TMPDIR/stage4-dev-USER.
func defaultDevAuditLog() string {
	name := strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil && u.Username != "" && !strings.ContainsAny(u.Username, `/\`) {
		name = u.Username
	}
	return filepath.Join(os.TempDir(), "stage4-dev-"+name, "audit")
}

// devSegmentBytes is dev's segment size: the smallest serve accepts. A
// segment is preallocated, as is the next one, and a tryout writes a
// handful of records: 64 MiB segments kept 161 MB on disk for them.
const devSegmentBytes = minAuditSegmentBytes

// newDevFlags declares dev's flags.
func newDevFlags() (*flag.FlagSet, *devFlags) {
	fs := newFlagSet("dev", devUsage)
	f := &devFlags{}
	fs.StringVar(&f.listen, "listen", "127.0.0.1:50051", "`host:port` of Stage-4")
	fs.StringVar(&f.stage3Listen, "stage3-listen", defaultStage3Listen, "`host:port` of the reference Stage-3")
	fs.StringVar(&f.metricsListen, "metrics-listen", defaultMetricsListen, "`host:port` of /metrics; empty turns it off")
	fs.StringVar(&f.auditLog, "audit-log", defaultDevAuditLog(), "`path` of the audit log: a directory of segment files")
	fs.Int64Var(&f.segmentBytes, "audit-segment-bytes", devSegmentBytes, "`bytes` at which a segment of the audit log is sealed (1 MiB to 2 GiB, as stage4 serve)")
	fs.BoolVar(&f.newAuditLog, "audit-new-log", false, "begin a new audit log although the last one lost records (as stage4 serve)")
	fs.StringVar(&f.log.level, "log-level", "info", "least severe `level` logged: debug, info, warn or error")
	fs.StringVar(&f.log.format, "log-format", "text", "log `format`: json or text")
	return fs, f
}

// runDev is the dev command.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newDevFlags()
	if err := parseFlags(fs, args, stderr, false); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("dev: unexpected arguments %q", fs.Args())
	}
	if err := checkAuditSegmentBytes("dev", f.segmentBytes); err != nil {
		return err
	}
	// Ctrl-C is for stage4 alone, so that `make run` ends with status 0.
	defer takeTerminal()()
	logger, err := newLogger(stderr, f.log)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.auditLog), 0o700); err != nil {
		return fmt.Errorf("create audit log folder: %w", err)
	}
	signingKey, verifierKey, err := devSigningKey(filepath.Dir(f.auditLog))
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", f.stage3Listen)
	if err != nil {
		return fmt.Errorf("listen reference stage3: %w", err)
	}
	refLogger := logger.With("component", "reference-stage3")
	// One line per call: Stage-4 logs only failures at info, and the
	// reference Stage-3's "started call" lines are for tests of its own
	// command, not a tryout's terminal.
	ref, refHealth := newReferenceStage3(stage3ref.Fault{}, refLogger, logging.WithLogOnEvents(logging.FinishCall))
	// The reference Stage-3 outlives Stage-4 so that calls in flight at
	// shutdown can still finish: it stops only after gateway.Run returns.
	refCtx, stopRef := context.WithCancel(context.WithoutCancel(ctx))
	refDone := make(chan error, 1)
	go func() {
		refDone <- gateway.ServeGRPC(refCtx, ref, refHealth, lis, defaultShutdownGrace, refLogger, nil)
	}()

	cfg := gateway.Config{
		Listen:                f.listen,
		MetricsListen:         f.metricsListen,
		AuditLog:              f.auditLog,
		AuditStore:            audit.OpenConfig{SegmentBytes: f.segmentBytes, NewLog: f.newAuditLog},
		AuditReaders:          authz.Everyone(), // a local tryout; serve denies by default
		MaxMessageBytes:       defaultMaxMessageBytes,
		ShutdownGrace:         defaultShutdownGrace,
		Stage3CatalogInterval: gateway.DefaultCatalogInterval,
		Revision:              revision,
		Stage3: stage3client.Config{
			Target:          lis.Addr().String(),
			Insecure:        true, // loopback, same process
			MaxDeadline:     defaultMaxDeadline,
			MaxMessageBytes: defaultMaxMessageBytes,
		},
	}
	// A key of its own, so that dev signs checkpoints and shows proofs.
	cfg.AuditSigningKeyFiles = []string{signingKey}
	err = withTracing(ctx, logger, func(tp trace.TracerProvider) error {
		cfg.TracerProvider = tp
		return gateway.Run(ctx, cfg, logger.With("component", "stage4"), func(a gateway.Addrs) {
			printDevBanner(stdout, a, lis.Addr(), f.auditLog)
			printDevCheckpointBanner(stdout, a, f.auditLog, verifierKey)
		})
	})
	stopRef()
	return errors.Join(err, <-refDone)
}

// devPlan is a plan the reference Stage-3 runs for alice: three steps, the
// last two fed by data bindings from the step before. It ends with
// {"length": 13}.
const devPlan = `{"plan":{"user_id":"alice","token_hash":"alice-token","trigger_type":"manual",` +
	`"steps":[{"domain":"text","method":"upper","parameters":{"text":"hello stage4"}},` +
	`{"domain":"text","method":"concat","parameters":{"right":"!"}},` +
	`{"domain":"text","method":"length","parameters":{}}],` +
	`"data_bindings":[{"source_step":0,"source_output":"text","target_step":1,"target_parameter":"left"},` +
	`{"source_step":1,"source_output":"text","target_step":2,"target_parameter":"text"}]}}`

// printDevBanner tells the developer where everything is.
func printDevBanner(w io.Writer, a gateway.Addrs, stage3 net.Addr, auditLog string) {
	metrics := "off"
	if a.Metrics != nil {
		metrics = "http://" + a.Metrics.String() + "/metrics"
	}
	fmt.Fprintf(w, `Stage-4 dev is running; Ctrl-C stops it.
  Stage-4 gRPC:       %s (plaintext, health, reflection)
  reference Stage-3:  %s (user alice, token alice-token)
  metrics:            %s
  audit log:          %s

Execute a plan (from the repository root):
  go tool -modfile=tools/go.mod grpcurl -plaintext -d '%s' %s stage4.v1.Stage4Service/ExecutePlan

List the audit log:
  go tool -modfile=tools/go.mod grpcurl -plaintext -d '{}' %s stage4.v1.Stage4Service/ListAuditEvents

List the methods Stage-3 offers (plans are checked against them):
  go tool -modfile=tools/go.mod grpcurl -plaintext -d '{}' %s stage4.v1.Stage4Service/ListMethods
`, a.GRPC, stage3, metrics, auditLog, devPlan, a.GRPC, a.GRPC, a.GRPC)
}
