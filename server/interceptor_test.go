package server

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
)

// fakeStage4 stands in for the server: like the real one, it refuses to
// execute without an audited execution in its context.
type fakeStage4 struct {
	stage4v1.UnimplementedStage4ServiceServer
	calls   atomic.Int32
	execute func(ctx context.Context) (*stage4v1.ExecutePlanResponse, error)
}

func (f *fakeStage4) ExecutePlan(ctx context.Context, _ *stage4v1.ExecutePlanRequest) (*stage4v1.ExecutePlanResponse, error) {
	f.calls.Add(1)
	ex, ok := executionFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "not audited")
	}
	if f.execute != nil {
		return f.execute(ctx)
	}
	return &stage4v1.ExecutePlanResponse{ExecutionId: ex.ID, PlanId: ex.PlanID, Result: &stage3v1.ExecuteMultiDomainPlanResponse{
		Results: []*stage3v1.StepResult{{StepIndex: 0}, {StepIndex: 1}},
	}}, nil
}

func (f *fakeStage4) ValidatePlan(context.Context, *stage4v1.ValidatePlanRequest) (*stage4v1.ValidatePlanResponse, error) {
	return &stage4v1.ValidatePlanResponse{PlanId: "sha256:x"}, nil
}

func (f *fakeStage4) ListAuditEvents(context.Context, *stage4v1.ListAuditEventsRequest) (*stage4v1.ListAuditEventsResponse, error) {
	return &stage4v1.ListAuditEventsResponse{}, nil
}

// testValidate rejects plans whose user starts with "invalid", as the real
// validator would reject a bad plan: INVALID_ARGUMENT naming the violation.
func testValidate(req *stage4v1.ExecutePlanRequest) error {
	if strings.HasPrefix(req.GetPlan().GetUserId(), "invalid") {
		return status.Error(codes.InvalidArgument, "plan.user_id: does not match the pattern")
	}
	return nil
}

// startServer serves fake on bufconn with outer interceptors, then the
// audit interceptor, as the lead's server chains them.
func startServer(t *testing.T, lg *audit.Log, fake *fakeStage4, outer ...grpc.UnaryServerInterceptor) stage4v1.Stage4ServiceClient {
	t.Helper()
	return startServerWith(t, lg, fake, nil, outer...)
}

// startServerWith is startServer with options for the audit interceptor.
func startServerWith(t *testing.T, lg *audit.Log, fake *fakeStage4, opts []InterceptorOption, outer ...grpc.UnaryServerInterceptor) stage4v1.Stage4ServiceClient {
	t.Helper()
	chain := append(outer, AuditInterceptor(lg, testValidate, testFingerprinter, opts...))
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(chain...))
	stage4v1.RegisterStage4ServiceServer(srv, fake)
	return stage4v1.NewStage4ServiceClient(testkit.Serve(t, srv))
}

const secretParam = "do-not-log-this-parameter-value"
const secretToken = "do-not-log-this-token-hash"

func plan(userID string) *stage4v1.Plan {
	params, _ := structpb.NewStruct(map[string]any{"text": secretParam})
	return &stage4v1.Plan{
		UserId: userID, TokenHash: secretToken, TriggerType: "manual",
		Steps: []*stage4v1.Step{
			{Domain: "text", Method: "upper", Parameters: params},
			{Domain: "text", Method: "reverse", Parameters: &structpb.Struct{}},
		},
		DataBindings: []*stage4v1.DataBinding{{SourceStep: 0, SourceOutput: "text", TargetStep: 1, TargetParameter: "text"}},
	}
}

// execute calls ExecutePlan and returns the execution id header.
func execute(t *testing.T, client stage4v1.Stage4ServiceClient, p *stage4v1.Plan) (*stage4v1.ExecutePlanResponse, string, error) {
	t.Helper()
	var md metadata.MD
	resp, err := client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: p}, grpc.Header(&md))
	ids := md.Get(HeaderExecutionID)
	require.Len(t, ids, 1, "the execution id header must be sent on success and failure")
	require.Regexp(t, "^[0-9a-f]{32}$", ids[0])
	return resp, ids[0], err
}

func requireReason(t *testing.T, err error, c codes.Code, reason stage4v1.ErrorReason) {
	t.Helper()
	st := status.Convert(err)
	require.Equal(t, c, st.Code(), st.Message())
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			require.Equal(t, rpcerr.Domain, info.GetDomain())
			require.Equal(t, reason.String(), info.GetReason())
			return
		}
	}
	t.Fatalf("no ErrorInfo in %v", st)
}

func detail(ev *stage4v1.AuditEvent, key string) *structpb.Value {
	return ev.GetDetails().GetFields()[key]
}

func TestInterceptorEventSequences(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		userID    string
		execute   func(ctx context.Context) (*stage4v1.ExecutePlanResponse, error)
		wantCode  codes.Code
		wantTypes []stage4v1.AuditEventType
		wantPhase string
		codeName  string
		wantCalls int32
	}{
		{name: "success", userID: "alice", wantCode: codes.OK, wantCalls: 1,
			wantTypes: []stage4v1.AuditEventType{received, started, completed}},
		{name: "validation failure", userID: "invalid-user", wantCode: codes.InvalidArgument, wantCalls: 0,
			wantTypes: []stage4v1.AuditEventType{received, failed}, wantPhase: audit.PhaseValidation, codeName: "INVALID_ARGUMENT"},
		{name: "stage3 denial", userID: "alice", wantCode: codes.PermissionDenied, wantCalls: 1,
			execute: func(context.Context) (*stage4v1.ExecutePlanResponse, error) {
				return nil, status.Error(codes.PermissionDenied, "token rejected for "+secretParam)
			},
			wantTypes: []stage4v1.AuditEventType{received, started, failed}, wantPhase: audit.PhaseStage3, codeName: "PERMISSION_DENIED"},
		{name: "stage3 unreachable", userID: "alice", wantCode: codes.Unavailable, wantCalls: 1,
			execute: func(context.Context) (*stage4v1.ExecutePlanResponse, error) {
				return nil, status.Error(codes.Unavailable, "connection refused")
			},
			wantTypes: []stage4v1.AuditEventType{received, started, failed}, wantPhase: audit.PhaseStage3, codeName: "UNAVAILABLE"},
		{name: "stage3 deadline", userID: "alice", wantCode: codes.DeadlineExceeded, wantCalls: 1,
			execute: func(context.Context) (*stage4v1.ExecutePlanResponse, error) {
				return nil, status.Error(codes.DeadlineExceeded, "too slow")
			},
			wantTypes: []stage4v1.AuditEventType{received, started, failed}, wantPhase: audit.PhaseStage3, codeName: "DEADLINE_EXCEEDED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			lg := openLog(t, path)
			fake := &fakeStage4{execute: tt.execute}
			client := startServer(t, lg, fake)

			p := plan(tt.userID)
			resp, id, err := execute(t, client, p)
			require.Equal(t, tt.wantCode, status.Code(err))
			require.Equal(t, tt.wantCalls, fake.calls.Load())
			if err == nil {
				require.Equal(t, id, resp.GetExecutionId(), "the handler sees the audited execution")
				require.Equal(t, testFingerprinter.PlanID(p), resp.GetPlanId())
			}

			events := listAll(t, lg, &stage4v1.ListAuditEventsRequest{})
			require.Len(t, events, len(tt.wantTypes))
			for i, ev := range events {
				require.Equal(t, tt.wantTypes[i], ev.GetType())
				require.Equal(t, id, ev.GetExecutionId())
				require.Equal(t, testFingerprinter.PlanID(p), ev.GetPlanId())
				require.Equal(t, tt.userID, ev.GetUserId())
			}
			rec := events[0]
			require.Equal(t, "manual", detail(rec, "trigger_type").GetStringValue())
			require.Equal(t, float64(2), detail(rec, "step_count").GetNumberValue())
			require.Equal(t, float64(1), detail(rec, "binding_count").GetNumberValue())
			if tt.wantPhase == audit.PhaseValidation {
				require.Nil(t, detail(rec, "steps"), "an invalid plan is described by counts only")
			} else {
				require.Equal(t, []any{"text.upper", "text.reverse"}, detail(rec, "steps").GetListValue().AsSlice())
			}
			require.Equal(t, "bufconn", detail(rec, "peer").GetStringValue())
			require.Equal(t, testFingerprinter.Short(secretToken), detail(rec, "token_fingerprint").GetStringValue())
			require.Nil(t, detail(rec, "truncated"))

			last := events[len(events)-1]
			if tt.wantPhase == "" {
				require.Equal(t, float64(2), detail(last, "step_count").GetNumberValue())
				require.GreaterOrEqual(t, detail(last, "stage3_latency_ms").GetNumberValue(), float64(0))
			} else {
				require.Equal(t, tt.wantPhase, detail(last, "phase").GetStringValue())
				require.Equal(t, tt.codeName, detail(last, "code").GetStringValue())
				// Neither the validator's nor Stage-3's text: both may quote
				// the plan.
				require.Nil(t, detail(last, "message"))
				if tt.wantPhase != audit.PhaseValidation {
					require.Equal(t, testFingerprinter.Short(status.Convert(err).Message()), detail(last, "message_fingerprint").GetStringValue())
				}
			}

			raw := logBytes(t, path)
			require.NotContains(t, string(raw), secretToken)
			require.NotContains(t, string(raw), secretParam)
			_, err = verifyLog(t, path)
			require.NoError(t, err)
		})
	}
}

func TestInterceptorPanicIsRecordedAndPropagates(t *testing.T) {
	t.Parallel()
	lg := openLog(t, logPath(t))
	var recovered atomic.Int32
	fake := &fakeStage4{execute: func(context.Context) (*stage4v1.ExecutePlanResponse, error) { panic("boom " + secretParam) }}
	client := startServer(t, lg, fake, recovery.UnaryServerInterceptor(recovery.WithRecoveryHandler(func(any) error {
		recovered.Add(1)
		return status.Error(codes.Internal, "internal error")
	})))

	_, id, err := execute(t, client, plan("alice"))
	require.Equal(t, codes.Internal, status.Code(err))
	require.Equal(t, int32(1), recovered.Load(), "the panic must reach the outer recovery interceptor")
	events := listAll(t, lg, &stage4v1.ListAuditEventsRequest{ExecutionId: id})
	require.Len(t, events, 3)
	require.Equal(t, []stage4v1.AuditEventType{received, started, failed}, []stage4v1.AuditEventType{events[0].GetType(), events[1].GetType(), events[2].GetType()})
	require.Equal(t, audit.PhaseInternal, detail(events[2], "phase").GetStringValue())
	require.NotContains(t, detail(events[2], "message").GetStringValue(), secretParam)
}

// TestInterceptorPanicLeavesNoAbortRegistration: every execution
// registers on the long-lived abort context (the gateway's shutdown), and
// every one, a panicking handler's too, takes its registration back:
// otherwise each panic would leak a registration for the life of the
// process.
func TestInterceptorPanicLeavesNoAbortRegistration(t *testing.T) {
	t.Parallel()
	lg := openLog(t, logPath(t))
	abort := &countingContext{Context: context.Background(), done: make(chan struct{})}
	panics := true
	fake := &fakeStage4{execute: func(context.Context) (*stage4v1.ExecutePlanResponse, error) {
		if panics {
			panic("boom")
		}
		return &stage4v1.ExecutePlanResponse{}, nil
	}}
	client := startServerWith(t, lg, fake, []InterceptorOption{WithAbort(abort)},
		recovery.UnaryServerInterceptor(recovery.WithRecoveryHandler(func(any) error { return status.Error(codes.Internal, "internal error") })))
	for range 3 {
		_, _, err := execute(t, client, plan("alice"))
		require.Equal(t, codes.Internal, status.Code(err))
	}
	panics = false
	_, _, err := execute(t, client, plan("alice"))
	require.NoError(t, err)
	registered, stopped := abort.counts()
	require.Equal(t, 4, registered)
	require.Equal(t, registered, stopped, "every registration on the abort context was taken back")
}

// countingContext is a context that is never done and counts the
// functions registered on it with context.AfterFunc (which calls its
// AfterFunc method, as it has a Done channel of its own), and how many of
// them were stopped.
type countingContext struct {
	context.Context     // for Deadline and Value: never done
	done                chan struct{}
	mu                  sync.Mutex
	registered, stopped int
}

func (c *countingContext) Done() <-chan struct{} { return c.done }
func (c *countingContext) Err() error            { return nil }

func (c *countingContext) AfterFunc(func()) func() bool {
	c.mu.Lock()
	c.registered++
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		c.stopped++
		c.mu.Unlock()
		return true
	}
}

func (c *countingContext) counts() (registered, stopped int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.registered, c.stopped
}

func TestInterceptorLeavesOtherMethodsAlone(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg := openLog(t, path)
	client := startServer(t, lg, &fakeStage4{})
	var md metadata.MD
	_, err := client.ValidatePlan(context.Background(), &stage4v1.ValidatePlanRequest{Plan: plan("alice")}, grpc.Header(&md))
	require.NoError(t, err)
	require.Empty(t, md.Get(HeaderExecutionID))
	_, err = client.ListAuditEvents(context.Background(), &stage4v1.ListAuditEventsRequest{})
	require.NoError(t, err)
	size := int64(len(logBytes(t, path)))
	require.Zero(t, size)
}

func TestInterceptorFailsClosedWhenTheLogFails(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		op        string // "write" or "fsync"
		failAt    int32  // which write or fsync fails
		wantCalls int32
		wantCode  codes.Code
		reason    stage4v1.ErrorReason
		wantTypes []stage4v1.AuditEventType // durable events, at most
	}{
		{name: "PLAN_RECEIVED write", op: "write", failAt: 1, wantCalls: 0, wantCode: codes.Unavailable, reason: rpcerr.AuditUnavailable},
		{name: "EXECUTION_STARTED write", op: "write", failAt: 2, wantCalls: 0, wantCode: codes.Unavailable, reason: rpcerr.AuditUnavailable,
			wantTypes: []stage4v1.AuditEventType{received}},
		{name: "EXECUTION_COMPLETED write", op: "write", failAt: 3, wantCalls: 1, wantCode: codes.Unknown, reason: rpcerr.OutcomeUnknown,
			wantTypes: []stage4v1.AuditEventType{received, started}},
		// PLAN_RECEIVED is not fsynced on its own: the first fsync is
		// EXECUTION_STARTED's, which makes both durable.
		{name: "EXECUTION_STARTED fsync", op: "fsync", failAt: 1, wantCalls: 0, wantCode: codes.Unavailable, reason: rpcerr.AuditUnavailable},
		{name: "EXECUTION_COMPLETED fsync", op: "fsync", failAt: 2, wantCalls: 1, wantCode: codes.Unknown, reason: rpcerr.OutcomeUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			lg := openLog(t, path, segstore.WithFileWrapper(func(f segstore.File) segstore.File {
				if tt.op == "write" {
					return &testkit.FaultyFile{File: f, FailRecordAt: tt.failAt}
				}
				return &testkit.FaultyFile{File: f, FailSyncAt: tt.failAt}
			}))
			fake := &fakeStage4{}
			client := startServer(t, lg, fake)

			_, id, err := execute(t, client, plan("alice"))
			requireReason(t, err, tt.wantCode, tt.reason)
			require.Equal(t, tt.wantCalls, fake.calls.Load())
			require.Error(t, lg.Err())

			for _, p := range []*stage4v1.Plan{plan("alice"), plan("invalid-user")} {
				_, _, err = execute(t, client, p)
				requireReason(t, err, codes.Unavailable, rpcerr.AuditUnavailable)
			}
			require.Equal(t, tt.wantCalls, fake.calls.Load(), "a failed log refuses every later call")

			events := listAll(t, lg, &stage4v1.ListAuditEventsRequest{})
			if tt.op == "write" {
				// The failed write may have carried earlier records of the
				// same group commit too: what is durable is a prefix.
				require.LessOrEqual(t, len(events), len(tt.wantTypes))
				for i, ev := range events {
					require.Equal(t, tt.wantTypes[i], ev.GetType())
					require.Equal(t, id, ev.GetExecutionId())
				}
			}

			// After a restart the execution ends as interrupted, if it
			// left a durable trace at all.
			require.NoError(t, lg.Close())
			lg2 := openLog(t, path)
			if len(lg2.Recovered()) > 0 {
				require.Equal(t, []string{id}, lg2.Recovered())
			}
			_, err = verifyLog(t, path)
			require.NoError(t, err)
		})
	}
}

func TestInterceptorConcurrentExecutions(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg := openLog(t, path)
	client := startServer(t, lg, &fakeStage4{})
	const n = 200
	var wg sync.WaitGroup
	ids := make([]string, n)
	for i := range n {
		wg.Go(func() {
			var md metadata.MD
			_, err := client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: plan("alice")}, grpc.Header(&md))
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = md.Get(HeaderExecutionID)[0]
		})
	}
	wg.Wait()
	res, err := verifyLog(t, path)
	require.NoError(t, err)
	require.Equal(t, uint64(3*n), res.Records)

	events := listAll(t, lg, &stage4v1.ListAuditEventsRequest{PageSize: 1000})
	require.Len(t, events, 3*n)
	byID := map[string][]stage4v1.AuditEventType{}
	for i, ev := range events {
		require.Equal(t, uint64(i+1), ev.GetSequence())
		byID[ev.GetExecutionId()] = append(byID[ev.GetExecutionId()], ev.GetType())
	}
	require.Len(t, byID, n)
	for _, id := range ids {
		require.Equal(t, []stage4v1.AuditEventType{received, started, completed}, byID[id], id)
	}
}

func TestInterceptorRecordsTerminalEventAfterCallerLeft(t *testing.T) {
	t.Parallel()
	lg := openLog(t, logPath(t))
	inHandler := make(chan struct{})
	fake := &fakeStage4{execute: func(ctx context.Context) (*stage4v1.ExecutePlanResponse, error) {
		close(inHandler)
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}}
	auditDone := make(chan struct{})
	client := startServer(t, lg, fake, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		defer close(auditDone)
		return h(ctx, req)
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-inHandler
		cancel()
	}()
	_, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: plan("alice")})
	require.Equal(t, codes.Canceled, status.Code(err))
	<-auditDone
	events := listAll(t, lg, &stage4v1.ListAuditEventsRequest{})
	require.Len(t, events, 3)
	require.Equal(t, failed, events[2].GetType())
	require.Equal(t, "CANCELLED", detail(events[2], "code").GetStringValue())
}

func TestInterceptorBoundsHostilePlans(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg := openLog(t, path)
	client := startServer(t, lg, &fakeStage4{})
	p := plan("invalid" + strings.Repeat("u", 500))
	p.TriggerType = strings.Repeat("t", 500)
	for range 300 {
		p.Steps = append(p.Steps, &stage4v1.Step{Domain: strings.Repeat("d", 100), Method: "m", Parameters: &structpb.Struct{}})
	}
	_, id, err := execute(t, client, p)
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	events := listAll(t, lg, &stage4v1.ListAuditEventsRequest{ExecutionId: id})
	require.Len(t, events, 2)
	rec := events[0]
	require.Empty(t, rec.GetUserId(), "an invalid user_id is not stored verbatim")
	require.Equal(t, testFingerprinter.Short(p.GetUserId()), detail(rec, "user_id_fingerprint").GetStringValue())
	require.Nil(t, detail(rec, "trigger_type"), "an invalid trigger_type is not stored")
	require.Nil(t, detail(rec, "steps"))
	require.Equal(t, float64(302), detail(rec, "step_count").GetNumberValue(), "counts stay exact")

	size := int64(len(logBytes(t, path)))
	t.Logf("both events of the invalid plan: %d bytes", size)
	require.Less(t, size, int64(2048), "both events of a hostile invalid plan fit in a few KiB")
}

func TestTestkitKnowsTheExecutionIDHeader(t *testing.T) {
	t.Parallel()
	require.Equal(t, HeaderExecutionID, testkit.ExecutionIDHeader)
}

func TestExecutionFromContextWithoutInterceptor(t *testing.T) {
	t.Parallel()
	_, ok := executionFromContext(context.Background())
	require.False(t, ok)
}
