package stage3client_test

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/telemetry"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// newBufconn serves svc over bufconn and returns a client for it configured
// by cfg (Target and Insecure are filled in).
func newBufconn(t *testing.T, svc *stage3ref.Service, cfg stage3client.Config, srvOpts ...grpc.ServerOption) *stage3client.Client {
	t.Helper()
	cfg.Target, cfg.Insecure = "passthrough:///bufnet", true
	return newClient(t, cfg, serveBufconn(t, svc, srvOpts...))
}

// serveBufconn serves svc over bufconn and returns the dialer that reaches it.
func serveBufconn(t *testing.T, svc *stage3ref.Service, srvOpts ...grpc.ServerOption) grpc.DialOption {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := stage3ref.Serve(lis, svc, srvOpts...)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	})
}

// retryingServiceConfig asks gRPC to retry every code five times; Execute
// must make one attempt regardless.
const retryingServiceConfig = `{"methodConfig": [{
	"name": [{"service": "stage3.v1.Stage3Service"}],
	"retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.001s", "maxBackoff": "0.001s", "backoffMultiplier": 1,
		"retryableStatusCodes": ["CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
			"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
			"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]}
}]}`

func newClient(t *testing.T, cfg stage3client.Config, opts ...grpc.DialOption) *stage3client.Client {
	t.Helper()
	c, err := stage3client.New(cfg, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })
	return c
}

// upperPlan is a one-step plan by alice with her default token.
func upperPlan(t *testing.T, text string) *stage3v1.ExecuteMultiDomainPlanRequest {
	t.Helper()
	params, err := structpb.NewStruct(map[string]any{"text": text})
	require.NoError(t, err)
	return &stage3v1.ExecuteMultiDomainPlanRequest{
		UserId: "alice", TokenHash: "alice-token", TriggerType: "manual",
		Steps: []*stage3v1.Step{{Domain: "text", Method: "upper", Parameters: params}},
	}
}

// requireStage4Error checks the code and the ErrorInfo reason of err.
func requireStage4Error(t *testing.T, err error, code codes.Code, reason stage4v1.ErrorReason) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, status.Code(err), "error: %v", err)
	require.Equal(t, reason, rpcerr.Reason(err), "error: %v", err)
}

func TestExecuteForwardsOnceAndReturnsTheResponseUnchanged(t *testing.T) {
	t.Parallel()
	svc := stage3ref.NewService()
	client := newBufconn(t, svc, stage3client.Config{})
	req := upperPlan(t, "hi")
	req.DataBindings = []*stage3v1.DataBinding{} // empty and nil encode alike
	sent := proto.CloneOf(req)

	resp, err := client.Execute(t.Context(), req)
	require.NoError(t, err)

	out, err := structpb.NewStruct(map[string]any{"text": "HI"})
	require.NoError(t, err)
	want := &stage3v1.ExecuteMultiDomainPlanResponse{
		ExecutionId: "s3-1",
		Results:     []*stage3v1.StepResult{{StepIndex: 0, Domain: "text", Method: "upper", Output: out}},
	}
	require.True(t, proto.Equal(want, resp), "got %v", resp)
	require.True(t, proto.Equal(sent, req), "Execute modified the request")
	got := svc.Requests()
	require.Len(t, got, 1)
	require.True(t, proto.Equal(sent, got[0]), "Stage-3 got %v", got[0])
}

func TestExecuteMapsEveryStage3Code(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		code       codes.Code
		wantCode   codes.Code
		wantReason stage4v1.ErrorReason
	}{
		{name: "canceled", code: codes.Canceled, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "unknown", code: codes.Unknown, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "invalid argument", code: codes.InvalidArgument, wantCode: codes.InvalidArgument, wantReason: rpcerr.Stage3Rejected},
		{name: "deadline exceeded", code: codes.DeadlineExceeded, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "not found", code: codes.NotFound, wantCode: codes.NotFound, wantReason: rpcerr.Stage3Rejected},
		{name: "already exists", code: codes.AlreadyExists, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "permission denied", code: codes.PermissionDenied, wantCode: codes.PermissionDenied, wantReason: rpcerr.Stage3Rejected},
		{name: "resource exhausted", code: codes.ResourceExhausted, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "failed precondition", code: codes.FailedPrecondition, wantCode: codes.FailedPrecondition, wantReason: rpcerr.Stage3Rejected},
		{name: "aborted", code: codes.Aborted, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "out of range", code: codes.OutOfRange, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "unimplemented", code: codes.Unimplemented, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "internal", code: codes.Internal, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "unavailable", code: codes.Unavailable, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "data loss", code: codes.DataLoss, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown},
		{name: "unauthenticated", code: codes.Unauthenticated, wantCode: codes.Unauthenticated, wantReason: rpcerr.Stage3Rejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := stage3ref.NewService()
			svc.SetFault(stage3ref.Fault{Status: status.New(tt.code, "from stage3")})
			client := newClient(t, stage3client.Config{Target: "passthrough:///bufnet", Insecure: true},
				serveBufconn(t, svc), grpc.WithDefaultServiceConfig(retryingServiceConfig))
			_, err := client.Execute(t.Context(), upperPlan(t, "x"))
			requireStage4Error(t, err, tt.wantCode, tt.wantReason)
			require.True(t, strings.HasSuffix(status.Convert(err).Message(), "stage3: from stage3") ||
				strings.HasSuffix(status.Convert(err).Message(), "stage3: "+tt.code.String()+": from stage3"),
				"Stage-3's message is lost: %q", status.Convert(err).Message())
			require.Equal(t, 1, svc.Calls(), "exactly one attempt, even for retryable codes")
		})
	}
}

func TestExecuteStage3Behaviour(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		fault      stage3ref.Fault
		user       string
		wantCode   codes.Code
		wantReason stage4v1.ErrorReason
		wantMsg    string
	}{
		{name: "token mismatch", user: "bob", wantCode: codes.PermissionDenied, wantReason: rpcerr.Stage3Rejected,
			wantMsg: `stage3: user "bob" is not authorized`},
		{name: "denied", fault: stage3ref.Fault{Deny: true}, wantCode: codes.PermissionDenied, wantReason: rpcerr.Stage3Rejected,
			wantMsg: `stage3: user "alice" is not authorized`},
		{name: "failed step", fault: stage3ref.Fault{Fail: true, FailAtStep: 0}, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown,
			wantMsg: "outcome unknown, the plan may have run; do not retry blindly: stage3: Internal: step 0 failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := stage3ref.NewService()
			svc.SetFault(tt.fault)
			req := upperPlan(t, "x")
			if tt.user != "" {
				req.UserId = tt.user
			}
			_, err := newBufconn(t, svc, stage3client.Config{}).Execute(t.Context(), req)
			requireStage4Error(t, err, tt.wantCode, tt.wantReason)
			require.Equal(t, tt.wantMsg, status.Convert(err).Message())
		})
	}
}

func TestExecuteNotReached(t *testing.T) {
	t.Parallel()
	// A port that was just free: nothing listens there.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())

	client := newClient(t, stage3client.Config{Target: addr, Insecure: true})
	_, err = client.Execute(t.Context(), upperPlan(t, "x"))
	requireStage4Error(t, err, codes.Unavailable, rpcerr.Stage3NotReached)
}

func TestExecuteDeadlineWhileConnectingIsNotReached(t *testing.T) {
	t.Parallel()
	// The dialer never connects, so the call waits for a transport until
	// MaxDeadline: a deadline that provably expired before sending.
	client := newClient(t, stage3client.Config{Target: "passthrough:///blackhole", Insecure: true, MaxDeadline: 50 * time.Millisecond},
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}))
	_, err := client.Execute(t.Context(), upperPlan(t, "x"))
	requireStage4Error(t, err, codes.Unavailable, rpcerr.Stage3NotReached)
}

func TestExecuteDeadlineWhileStage3HangsIsUnknown(t *testing.T) {
	t.Parallel()
	svc := stage3ref.NewService()
	svc.SetFault(stage3ref.Fault{Hang: true})
	client := newBufconn(t, svc, stage3client.Config{MaxDeadline: 50 * time.Millisecond})
	_, err := client.Execute(t.Context(), upperPlan(t, "x"))
	requireStage4Error(t, err, codes.Unknown, rpcerr.OutcomeUnknown)
	require.Equal(t, 1, svc.Calls())
}

func TestExecuteCallerCancel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		afterSent  bool
		wantReason stage4v1.ErrorReason
		wantCalls  int
	}{
		{name: "before sending", wantReason: rpcerr.Stage3NotReached, wantCalls: 0},
		{name: "while Stage-3 runs", afterSent: true, wantReason: rpcerr.OutcomeUnknown, wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := stage3ref.NewService()
			svc.SetFault(stage3ref.Fault{Hang: true})
			client := newBufconn(t, svc, stage3client.Config{})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if !tt.afterSent {
				cancel()
			}
			errc := make(chan error, 1)
			go func() {
				_, err := client.Execute(ctx, upperPlan(t, "x"))
				errc <- err
			}()
			if tt.afterSent {
				<-svc.Received(1)
				cancel()
			}
			requireStage4Error(t, <-errc, codes.Canceled, tt.wantReason)
			require.Equal(t, tt.wantCalls, svc.Calls())
		})
	}
}

func TestExecuteForwardsOnlyAllowListedMetadata(t *testing.T) {
	t.Parallel()
	seen := make(chan metadata.MD, 1)
	capture := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		seen <- md
		return handler(ctx, req)
	}
	// As the gateway wires it: trace context flows through OpenTelemetry's
	// propagator, from the server's stats handler to the client's.
	cfg := stage3client.Config{Target: "passthrough:///bufnet", Insecure: true}
	client := newClient(t, cfg, serveBufconn(t, stage3ref.NewService(), grpc.UnaryInterceptor(capture)),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithPropagators(telemetry.Propagator()))))

	incoming := metadata.Pairs(
		"authorization", "Bearer secret",
		"x-request-id", "req-1",
		"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"tracestate", "vendor=1",
		"x-custom", "leak",
		"cookie", "session=1",
	)
	// What otelgrpc's server handler does with a caller's metadata.
	ctx := telemetry.Propagator().Extract(metadata.NewIncomingContext(t.Context(), incoming), propagation.HeaderCarrier(http.Header{
		"Traceparent": incoming.Get("traceparent"), "Tracestate": incoming.Get("tracestate"),
	}))
	ctx = metadata.AppendToOutgoingContext(ctx, "x-outgoing", "leak")
	_, err := client.Execute(ctx, upperPlan(t, "x"))
	require.NoError(t, err)

	md := <-seen
	require.Equal(t, []string{"req-1"}, md.Get("x-request-id"))
	require.Equal(t, []string{"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, md.Get("traceparent"))
	require.Equal(t, []string{"vendor=1"}, md.Get("tracestate"))
	for _, k := range []string{"authorization", "x-custom", "cookie", "x-outgoing"} {
		require.Empty(t, md.Get(k), "Stage-3 saw %s", k)
	}
}

func TestExecuteDeadline(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		maxDeadline    time.Duration
		callerDeadline time.Duration // 0: none
		wantAtMost     time.Duration
	}{
		{name: "caller has none", maxDeadline: 5 * time.Second, wantAtMost: 5 * time.Second},
		{name: "caller's is longer", maxDeadline: 5 * time.Second, callerDeadline: time.Hour, wantAtMost: 5 * time.Second},
		{name: "caller's is shorter", maxDeadline: time.Hour, callerDeadline: 5 * time.Second, wantAtMost: 5 * time.Second},
		{name: "default maximum", callerDeadline: time.Hour, wantAtMost: stage3client.DefaultMaxDeadline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			remaining := make(chan time.Duration, 1)
			capture := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				deadline, ok := ctx.Deadline()
				if !ok {
					remaining <- 0
				} else {
					remaining <- time.Until(deadline)
				}
				return handler(ctx, req)
			}
			client := newBufconn(t, stage3ref.NewService(), stage3client.Config{MaxDeadline: tt.maxDeadline}, grpc.UnaryInterceptor(capture))
			ctx := t.Context()
			if tt.callerDeadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.callerDeadline)
				defer cancel()
			}
			_, err := client.Execute(ctx, upperPlan(t, "x"))
			require.NoError(t, err)
			got := <-remaining
			require.Positive(t, got, "Stage-3 saw no deadline")
			require.LessOrEqual(t, got, tt.wantAtMost)
			require.Greater(t, got, tt.wantAtMost/2)
		})
	}
}

func TestExecuteMessageLimits(t *testing.T) {
	t.Parallel()
	// concat doubles its input and is returned with it: a small request with
	// a response three times as large.
	grow := func(t *testing.T, n int) *stage3v1.ExecuteMultiDomainPlanRequest {
		req := upperPlan(t, strings.Repeat("a", n))
		req.Steps = append(req.Steps, &stage3v1.Step{Domain: "text", Method: "concat", Parameters: &structpb.Struct{}})
		req.DataBindings = []*stage3v1.DataBinding{
			{SourceStep: 0, SourceOutput: "text", TargetStep: 1, TargetParameter: "left"},
			{SourceStep: 0, SourceOutput: "text", TargetStep: 1, TargetParameter: "right"},
		}
		return req
	}
	tests := []struct {
		name       string
		textBytes  int
		wantCode   codes.Code
		wantReason stage4v1.ErrorReason
		wantCalls  int
	}{
		{name: "within limits", textBytes: 100, wantCode: codes.OK, wantCalls: 1},
		{name: "request too large is not sent", textBytes: 2000, wantCode: codes.InvalidArgument, wantReason: rpcerr.PlanInvalid, wantCalls: 0},
		{name: "response too large after Stage-3 ran", textBytes: 400, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown, wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := stage3ref.NewService()
			client := newBufconn(t, svc, stage3client.Config{MaxMessageBytes: 1000})
			_, err := client.Execute(t.Context(), grow(t, tt.textBytes))
			require.Equal(t, tt.wantCode, status.Code(err), "error: %v", err)
			require.Equal(t, tt.wantReason, rpcerr.Reason(err))
			require.Equal(t, tt.wantCalls, svc.Calls())
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	pki := newPKI(t)
	tests := []struct {
		name    string
		cfg     stage3client.Config
		wantErr string
	}{
		{name: "no target", cfg: stage3client.Config{Insecure: true}, wantErr: "target is empty"},
		{name: "negative deadline", cfg: stage3client.Config{Target: "x:1", Insecure: true, MaxDeadline: -1}, wantErr: "must not be negative"},
		{name: "negative message size", cfg: stage3client.Config{Target: "x:1", Insecure: true, MaxMessageBytes: -1}, wantErr: "must not be negative"},
		{name: "insecure with a CA", cfg: stage3client.Config{Target: "x:1", Insecure: true, CAFile: pki.caFile}, wantErr: "TLS settings given for an insecure connection"},
		{name: "insecure with a server name", cfg: stage3client.Config{Target: "x:1", Insecure: true, ServerName: "a"}, wantErr: "TLS settings given for an insecure connection"},
		{name: "certificate without key", cfg: stage3client.Config{Target: "x:1", CertFile: pki.clientCert}, wantErr: "both a certificate and a key"},
		{name: "key without certificate", cfg: stage3client.Config{Target: "x:1", KeyFile: pki.clientKey}, wantErr: "both a certificate and a key"},
		{name: "missing CA file", cfg: stage3client.Config{Target: "x:1", CAFile: filepath.Join(t.TempDir(), "nope.pem")}, wantErr: "read stage3 CA file"},
		{name: "CA file without PEM", cfg: stage3client.Config{Target: "x:1", CAFile: pki.notPEM}, wantErr: "holds no PEM certificate"},
		{name: "key does not match certificate", cfg: stage3client.Config{Target: "x:1", CertFile: pki.clientCert, KeyFile: pki.serverKey}, wantErr: "load stage3 client certificate"},
		{name: "unparsable target", cfg: stage3client.Config{Target: "%zz", Insecure: true}, wantErr: "create stage3 client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := stage3client.New(tt.cfg)
			require.ErrorContains(t, err, tt.wantErr)
			require.Nil(t, c)
		})
	}
}
