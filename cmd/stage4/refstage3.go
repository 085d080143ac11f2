package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

const defaultStage3Listen = "127.0.0.1:50052"

// describeMethodsMethod is Stage-3's catalogue call, which Stage-4 makes on
// an interval of its own.
const describeMethodsMethod = "/stage3.v1.Stage3Service/DescribeMethods"

const referenceStage3Usage = `Usage: stage4 reference-stage3 [flags]

Runs the reference Stage-3 executor alone, in plaintext, with gRPC health and
server reflection: a stand-in for the real Stage-3 in grpcurl sessions and
tests. It knows the user alice with token "alice-token". The fault flags make
it misbehave on purpose. Logs go to stderr; the "serving" line carries the
bound address (useful with port 0). SIGINT or SIGTERM stops it gracefully.
`

// referenceStage3Flags holds reference-stage3's flag values.
type referenceStage3Flags struct {
	listen        string
	delay         time.Duration
	hang          bool
	shutdownGrace time.Duration
	log           logFlags
}

// newReferenceStage3Flags declares reference-stage3's flags.
func newReferenceStage3Flags() (*flag.FlagSet, *referenceStage3Flags) {
	fs := newFlagSet("reference-stage3", referenceStage3Usage)
	f := &referenceStage3Flags{}
	fs.StringVar(&f.listen, "listen", defaultStage3Listen, "`host:port` to serve on; port 0 picks a free one")
	fs.DurationVar(&f.delay, "delay", 0, "fault: every call waits this long before executing")
	fs.BoolVar(&f.hang, "hang", false, "fault: every call blocks until the caller gives up")
	fs.DurationVar(&f.shutdownGrace, "shutdown-grace", defaultShutdownGrace, "how long running calls may take to finish on shutdown")
	fs.StringVar(&f.log.level, "log-level", "info", "least severe `level` logged: debug, info, warn or error")
	fs.StringVar(&f.log.format, "log-format", "json", "log `format`: json or text")
	return fs, f
}

// runReferenceStage3 is the reference-stage3 command.
func runReferenceStage3(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs, f := newReferenceStage3Flags()
	if err := parseFlags(fs, args, stderr, false); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("reference-stage3: unexpected arguments %q", fs.Args())
	}
	logger, err := newLogger(stderr, f.log)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv, hs := newReferenceStage3(stage3ref.Fault{Delay: f.delay, Hang: f.hang}, logger, gateway.CallLogOptions...)
	logger.Info("serving", "grpc_addr", lis.Addr().String())
	return gateway.ServeGRPC(ctx, srv, hs, lis, f.shutdownGrace, logger, nil)
}

// newReferenceStage3 returns a gRPC server with the reference Stage-3,
// health (already SERVING) and reflection, logging calls with logOpts
// (gateway.CallLogOptions: when each starts and finishes).
func newReferenceStage3(fault stage3ref.Fault, logger *slog.Logger, logOpts ...logging.Option) (*grpc.Server, *health.Server) {
	svc := stage3ref.NewService(stage3ref.WithTokens(stage3ref.DefaultTokens()))
	svc.SetFault(fault)
	callLogger := gateway.GRPCLogger(logger)
	recoveryOpt := recovery.WithRecoveryHandlerContext(gateway.RecoveredPanic(logger))
	// What Stage-4 asks on its own, not for a caller, is not logged: its
	// health checks (every few seconds; probes' too) and catalogue
	// refreshes would drown the plans' calls. The plans' call lines name
	// the request id Stage-4 passes on, as a Stage-3 that dedupes would
	// key on it.
	notHealth := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.Service != healthpb.Health_ServiceDesc.ServiceName && c.FullMethod() != describeMethodsMethod
	})
	unaryLogOptions := append(slices.Clone(logOpts), logging.WithFieldsFromContext(stage4RequestID))
	srv := grpc.NewServer(
		// Outermost first, as in Stage-4: logging, then recovery.
		grpc.ChainUnaryInterceptor(
			selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(callLogger, unaryLogOptions...), notHealth),
			recovery.UnaryServerInterceptor(recoveryOpt),
		),
		grpc.ChainStreamInterceptor(
			selector.StreamServerInterceptor(logging.StreamServerInterceptor(callLogger, logOpts...), notHealth),
			recovery.StreamServerInterceptor(recoveryOpt),
		),
	)
	stage3v1.RegisterStage3ServiceServer(srv, svc)
	serviceName := stage3v1.Stage3Service_ServiceDesc.ServiceName
	hs := gateway.NewHealth(serviceName)
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	gateway.SetHealth(hs, healthpb.HealthCheckResponse_SERVING, serviceName)
	return srv, hs
}

// stage4RequestID is the x-stage4-request-id of a call, as a log field.
func stage4RequestID(ctx context.Context) logging.Fields {
	md, _ := metadata.FromIncomingContext(ctx)
	if ids := md.Get(stage3client.RequestIDHeader); len(ids) == 1 {
		return logging.Fields{"stage4.request_id", ids[0]}
	}
	return nil
}
