package server

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
)

// keyedServer is the audit interceptor with a scripted handler on a
// memory store: each call runs the next of its scripted Stage-3 outcomes.
type keyedServer struct {
	client   stage4v1.Stage4ServiceClient
	log      *audit.Log
	storage  *memstore.Storage
	mu       sync.Mutex
	script   []func(ctx context.Context, ex execution) (*stage4v1.ExecutePlanResponse, error)
	called   int
	outcomes []KeyOutcome
}

func newKeyedServer(t *testing.T, opts ...InterceptorOption) *keyedServer {
	t.Helper()
	k := &keyedServer{storage: memstore.NewStorage()}
	var err error
	k.log, err = audit.New(memstore.Open(k.storage, ""), audit.WithPingInterval(10*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { k.log.Close() })
	fake := &fakeStage4{execute: func(ctx context.Context) (*stage4v1.ExecutePlanResponse, error) {
		ex, _ := executionFromContext(ctx)
		k.mu.Lock()
		k.called++
		next := k.script[0]
		k.script = k.script[1:]
		k.mu.Unlock()
		return next(ctx, ex)
	}}
	// An invalid plan, for these tests, is one whose trigger is "bad":
	// its fixed retry keeps the key's caller (the user).
	validate := func(r *stage4v1.ExecutePlanRequest) error {
		if err := Validate(&stage4v1.ExecutePlanRequest{RequestId: r.GetRequestId(), Plan: plan("alice")}); err != nil {
			return err
		}
		if r.GetPlan().GetTriggerType() == "bad" {
			return status.Error(codes.InvalidArgument, "plan.trigger_type: bad")
		}
		return nil
	}
	opts = append([]InterceptorOption{WithKeyObserver(func(_ context.Context, o KeyOutcome) {
		k.mu.Lock()
		k.outcomes = append(k.outcomes, o)
		k.mu.Unlock()
	})}, opts...)
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(recovery.UnaryServerInterceptor(), AuditInterceptor(k.log, validate, testFingerprinter, opts...)))
	stage4v1.RegisterStage4ServiceServer(srv, fake)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	k.client = stage4v1.NewStage4ServiceClient(conn)
	return k
}

// then scripts what "Stage-3" does on the next call that reaches it.
func (k *keyedServer) then(f func(ctx context.Context, ex execution) (*stage4v1.ExecutePlanResponse, error)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.script = append(k.script, f)
}

func (k *keyedServer) calls() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.called
}

func (k *keyedServer) events(t *testing.T) []audit.Event {
	t.Helper()
	evs, _, err := k.log.List(context.Background(), audit.Filter{}, 1000, "")
	require.NoError(t, err)
	return evs
}

// keyedCall is the answer to one call, with its headers.
type keyedCall struct {
	resp     *stage4v1.ExecutePlanResponse
	err      error
	execID   string
	replayed bool
}

func (k *keyedServer) call(ctx context.Context, p *stage4v1.Plan, id string) keyedCall {
	var md metadata.MD
	resp, err := k.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: p, RequestId: id}, grpc.Header(&md))
	c := keyedCall{resp: resp, err: err, replayed: len(md.Get(HeaderReplayed)) == 1 && md.Get(HeaderReplayed)[0] == "true"}
	if ids := md.Get(HeaderExecutionID); len(ids) == 1 {
		c.execID = ids[0]
	}
	return c
}

func succeed(_ context.Context, ex execution) (*stage4v1.ExecutePlanResponse, error) {
	return &stage4v1.ExecutePlanResponse{ExecutionId: ex.ID, PlanId: ex.PlanID, Result: &stage3v1.ExecuteMultiDomainPlanResponse{
		ExecutionId: "s3-" + ex.ID, Results: []*stage3v1.StepResult{{StepIndex: 0, Domain: "text", Method: "upper", Output: mustStruct(map[string]any{"text": "RESULT", "n": 1.5, "k": []any{"a", nil}})}},
	}}, nil
}

func failWith(err error) func(context.Context, execution) (*stage4v1.ExecutePlanResponse, error) {
	return func(context.Context, execution) (*stage4v1.ExecutePlanResponse, error) { return nil, err }
}

func otherPlan() *stage4v1.Plan {
	p := plan("alice")
	p.TriggerType = "schedule"
	return p
}

// TestIdempotentExecutePlan runs every row of the outcome table of
// request_id through the audit interceptor (the binary's tests run them
// through real Stage-3 and stores).
func TestIdempotentExecutePlan(t *testing.T) {
	t.Parallel()
	rejected := rpcerr.New(codes.PermissionDenied, rpcerr.Stage3Rejected, "stage3: token refused for alice", map[string]string{"stage3_code": "PermissionDenied"})
	unknown := rpcerr.New(codes.Unknown, rpcerr.OutcomeUnknown, "outcome unknown, the plan may have run; do not retry blindly: stage3: Internal: step 1 failed", nil)
	notReached := rpcerr.New(codes.Unavailable, rpcerr.Stage3NotReached, "stage3 not reached, nothing was executed and a retry is safe: connection refused", nil)
	canceledUnsent := rpcerr.New(codes.Canceled, rpcerr.Stage3NotReached, "canceled by the caller before Stage-3 was reached", nil)
	tests := []struct {
		name  string
		first func(context.Context, execution) (*stage4v1.ExecutePlanResponse, error)
		// retry is the second call's plan; nil for the same plan.
		retry *stage4v1.Plan
		// wantCode is the retry's code; wantRuns whether it executes.
		wantCode     codes.Code
		wantReason   stage4v1.ErrorReason
		wantRuns     bool
		wantReplayed bool
		wantOutcomes []KeyOutcome
	}{
		{name: "a result is replayed", first: succeed, wantCode: codes.OK, wantReplayed: true,
			wantOutcomes: []KeyOutcome{KeyClaimed, KeyReplayed}},
		{name: "a Stage-3 refusal is replayed", first: failWith(rejected), wantCode: codes.PermissionDenied, wantReason: rpcerr.Stage3Rejected, wantReplayed: true,
			wantOutcomes: []KeyOutcome{KeyClaimed, KeyReplayed}},
		{name: "an unknown outcome stays unknown", first: failWith(unknown), wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown, wantReplayed: true,
			wantOutcomes: []KeyOutcome{KeyClaimed, KeyOutcomeUnknown}},
		{name: "a panic leaves the outcome unknown", first: func(context.Context, execution) (*stage4v1.ExecutePlanResponse, error) { panic("boom") },
			wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown, wantReplayed: true, wantOutcomes: []KeyOutcome{KeyClaimed, KeyOutcomeUnknown}},
		{name: "another plan is refused", first: succeed, retry: otherPlan(), wantCode: codes.FailedPrecondition, wantReason: rpcerr.RequestIDReused,
			wantOutcomes: []KeyOutcome{KeyClaimed, KeyReused}},
		{name: "Stage-3 not reached: the key is not used up", first: failWith(notReached), wantCode: codes.OK, wantRuns: true,
			wantOutcomes: []KeyOutcome{KeyClaimed, KeyClaimed}},
		{name: "cancelled before Stage-3: the key is not used up", first: failWith(canceledUnsent), wantCode: codes.OK, wantRuns: true,
			wantOutcomes: []KeyOutcome{KeyClaimed, KeyClaimed}},
		{name: "another user's key is another key", first: succeed, retry: plan("bob"), wantCode: codes.OK, wantRuns: true,
			wantOutcomes: []KeyOutcome{KeyClaimed, KeyClaimed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k := newKeyedServer(t)
			ctx := t.Context()
			k.then(tt.first)
			if tt.wantRuns {
				k.then(succeed)
			}
			first := k.call(ctx, plan("alice"), "req-1")
			require.Len(t, first.execID, 32)
			require.False(t, first.replayed)
			before := k.events(t)
			retryPlan := tt.retry
			if retryPlan == nil {
				retryPlan = plan("alice")
			}
			retry := k.call(ctx, retryPlan, "req-1")
			require.Equal(t, tt.wantCode, status.Code(retry.err), "%v", retry.err)
			require.Equal(t, tt.wantReplayed, retry.replayed, "x-stage4-replayed")
			require.Equal(t, tt.wantOutcomes, k.outcomes)
			if tt.wantRuns {
				require.Equal(t, 2, k.calls(), "the retry executes")
				require.NotEqual(t, first.execID, retry.execID)
				require.NoError(t, retry.err)
				return
			}
			require.Equal(t, 1, k.calls(), "the retry executes nothing")
			require.Equal(t, first.execID, retry.execID, "the header names the first execution")
			require.Equal(t, before, k.events(t), "the retry writes no event")
			if tt.wantCode == codes.OK {
				require.True(t, proto.Equal(first.resp, retry.resp), "the same result: %v, want %v", retry.resp, first.resp)
				a, _ := deterministic.Marshal(first.resp)
				b, _ := deterministic.Marshal(retry.resp)
				require.Equal(t, a, b, "the same result bytes")
				return
			}
			requireReason(t, retry.err, tt.wantCode, tt.wantReason)
			if tt.wantReplayed && tt.wantCode != codes.Unknown {
				require.True(t, proto.Equal(status.Convert(first.err).Proto(), status.Convert(retry.err).Proto()),
					"the same code, message and details: %v, want %v", retry.err, first.err)
				return
			}
			require.Equal(t, first.execID, rpcerr.Info(retry.err).GetMetadata()["execution_id"])
		})
	}
}

// TestIdempotentCallInProgress: while the first call runs, a retry gets
// ABORTED with REQUEST_IN_PROGRESS and a RetryInfo, executes nothing and
// writes nothing; once the first has finished, the retry gets its result.
func TestIdempotentCallInProgress(t *testing.T) {
	t.Parallel()
	k := newKeyedServer(t)
	ctx := t.Context()
	entered, release := make(chan struct{}), make(chan struct{})
	k.then(func(ctx context.Context, ex execution) (*stage4v1.ExecutePlanResponse, error) {
		close(entered)
		<-release
		return succeed(ctx, ex)
	})
	firstDone := make(chan keyedCall, 1)
	go func() { firstDone <- k.call(ctx, plan("alice"), "req-1") }()
	<-entered
	before := k.events(t)
	var trailer metadata.MD
	_, err := k.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: plan("alice"), RequestId: "req-1"}, grpc.Trailer(&trailer))
	require.Equal(t, []string{"1000"}, trailer.Get(TrailerRetryPushback), "gRPC's retry pushback: %v", err)
	retry := k.call(ctx, plan("alice"), "req-1")
	requireReason(t, retry.err, codes.Aborted, rpcerr.RequestInProgress)
	require.False(t, retry.replayed)
	var delay *errdetails.RetryInfo
	for _, d := range status.Convert(retry.err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			delay = ri
		}
	}
	require.NotNil(t, delay, "ABORTED carries a google.rpc.RetryInfo")
	require.Equal(t, RetryInProgressAfter, delay.GetRetryDelay().AsDuration())
	require.Equal(t, before, k.events(t))
	close(release)
	first := <-firstDone
	require.NoError(t, first.err)
	require.Equal(t, first.execID, retry.execID)
	require.Equal(t, first.execID, rpcerr.Info(retry.err).GetMetadata()["execution_id"])
	again := k.call(ctx, plan("alice"), "req-1")
	require.NoError(t, again.err)
	require.True(t, again.replayed)
	require.Equal(t, 1, k.calls())
}

// TestIdempotentRefusalsDoNotUseTheKey: a call refused before Stage-3
// could be called (an invalid plan, an unavailable audit store) leaves the
// key free, and the retry runs as a first call.
func TestIdempotentRefusalsDoNotUseTheKey(t *testing.T) {
	t.Parallel()
	t.Run("invalid plan", func(t *testing.T) {
		t.Parallel()
		k := newKeyedServer(t)
		bad := plan("alice")
		bad.TriggerType = "bad"
		first := k.call(t.Context(), bad, "req-1")
		require.Equal(t, codes.InvalidArgument, status.Code(first.err))
		require.Len(t, first.execID, 32, "the header is sent")
		k.then(succeed)
		retry := k.call(t.Context(), plan("alice"), "req-1")
		require.NoError(t, retry.err)
		require.False(t, retry.replayed)
		require.Equal(t, 1, k.calls())
		require.Equal(t, []KeyOutcome{KeyClaimed}, k.outcomes, "the invalid call claimed nothing")
	})
	t.Run("audit store unavailable", func(t *testing.T) {
		t.Parallel()
		k := newKeyedServer(t)
		k.storage.Break(memstore.ErrBroken, false)
		first := k.call(t.Context(), plan("alice"), "req-1")
		requireReason(t, first.err, codes.Unavailable, rpcerr.AuditUnavailable)
		require.Len(t, first.execID, 32)
		k.storage.Heal()
		// The log's health follows the store's pings (every 10 ms here).
		require.Eventually(t, func() bool { return k.log.Err() == nil }, 10*time.Second, 5*time.Millisecond)
		k.then(succeed)
		retry := k.call(t.Context(), plan("alice"), "req-1")
		require.NoError(t, retry.err)
		require.Equal(t, 1, k.calls())
	})
}

// TestIdempotentKeyExpires: a key older than the retention is forgotten:
// the call runs as a first call.
func TestIdempotentKeyExpires(t *testing.T) {
	t.Parallel()
	k := newKeyedServer(t, WithRequestRetention(time.Nanosecond))
	k.then(succeed)
	k.then(succeed)
	first := k.call(t.Context(), plan("alice"), "req-1")
	require.NoError(t, first.err)
	again := k.call(t.Context(), plan("alice"), "req-1")
	require.NoError(t, again.err)
	require.False(t, again.replayed)
	require.NotEqual(t, first.execID, again.execID)
	require.Equal(t, 2, k.calls())
}

// TestIdempotentPlanReceivedNamesTheRequestID: the first call's
// PLAN_RECEIVED records its request_id and its key's caller; the log
// holds no trace of the answer; a call without a request_id records none.
func TestIdempotentPlanReceivedNamesTheRequestID(t *testing.T) {
	t.Parallel()
	k := newKeyedServer(t)
	k.then(succeed)
	k.then(succeed)
	keyed := k.call(t.Context(), plan("alice"), "req-1")
	require.NoError(t, keyed.err)
	plain := k.call(t.Context(), plan("alice"), "")
	require.NoError(t, plain.err)
	for _, ev := range k.events(t) {
		if ev.Type == audit.PlanReceived {
			want := map[string]any{keyed.execID: "req-1", plain.execID: nil}[ev.ExecutionID]
			require.Equal(t, want, ev.Details["request_id"], "execution %s", ev.ExecutionID)
			k, ok := audit.RequestKeyOf(&ev)
			require.Equal(t, ev.ExecutionID == keyed.execID, ok)
			if ok {
				require.Equal(t, audit.RequestKey{Caller: "user:alice", ID: "req-1"}, k, "the whole key, for a store to find")
			}
		}
	}
	for _, r := range k.storage.Records() {
		require.NotContains(t, string(r.Line), "RESULT", "the answer is not in the log")
	}
}
