package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/catalog"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// harness is Stage-4 and the reference Stage-3, each on its own bufconn,
// wired as in production: the generated Stage-3 client, the audit
// interceptor with the single validation entry point, a real log file.
type harness struct {
	client  stage4v1.Stage4ServiceClient
	stage3  *stage3ref.Service
	log     *audit.Log
	logPath string
	catalog *catalog.Cache // with harnessOptions.catalog
}

type harnessOptions struct {
	stage3Target string        // overrides the bufconn Stage-3 (e.g. nothing listening)
	maxDeadline  time.Duration // Stage-3 client's maximum deadline
	fileWrapper  func(segstore.File) segstore.File
	noAudit      bool // register the service without the audit interceptor
	// inner runs between the audit interceptor and the handler.
	inner grpc.UnaryServerInterceptor
	// auditOptions are audit.New's (a checkpoint signer).
	auditOptions []audit.Option
	// catalog validates with the reference Stage-3's catalogue, fetched
	// over the same client, as the gateway wires it.
	catalog bool
	// store, when set, opens the audit store instead of a log directory.
	store func(testing.TB) audit.Store
}

func newHarness(t testing.TB, o harnessOptions) *harness {
	t.Helper()
	h := &harness{stage3: stage3ref.NewService(), logPath: filepath.Join(t.TempDir(), "audit")}

	s3lis := bufconn.Listen(1 << 20)
	s3srv := stage3ref.Serve(s3lis, h.stage3)
	t.Cleanup(func() { _ = s3srv.Close() })

	cfg := stage3client.Config{Target: "passthrough:///stage3", Insecure: true, MaxDeadline: o.maxDeadline}
	var dialOpts []grpc.DialOption
	if o.stage3Target != "" {
		cfg.Target = o.stage3Target
	} else {
		dialOpts = append(dialOpts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return s3lis.DialContext(ctx)
		}))
	}
	s3client, err := stage3client.New(cfg, dialOpts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s3client.Close() })

	fileOpts := []segstore.Option{segstore.WithSegmentBytes(1 << 20)}
	if o.fileWrapper != nil {
		fileOpts = append(fileOpts, segstore.WithFileWrapper(o.fileWrapper))
	}
	var store audit.Store
	if o.store != nil {
		store = o.store(t)
	} else {
		store, err = segstore.Open(h.logPath, fileOpts...)
		require.NoError(t, err)
	}
	h.log, err = audit.New(store, o.auditOptions...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.log.Close() })

	var validator *Validator
	if o.catalog {
		h.catalog, err = catalog.New(s3client)
		require.NoError(t, err)
		require.NoError(t, h.catalog.Refresh(context.Background()))
		validator = NewValidator(h.catalog)
	}
	var srvOpts []grpc.ServerOption
	if !o.noAudit {
		srvOpts = append(srvOpts, grpc.ChainUnaryInterceptor(AuditInterceptor(h.log,
			func(r *stage4v1.ExecutePlanRequest) error { return validator.Validate(r) }, testFingerprinter)))
	}
	if o.inner != nil {
		srvOpts = append(srvOpts, grpc.ChainUnaryInterceptor(o.inner))
	}
	srv := grpc.NewServer(srvOpts...)
	stage4v1.RegisterStage4ServiceServer(srv, New(s3client, h.log, testFingerprinter, WithValidator(validator)))
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	conn, err := grpc.NewClient("passthrough:///stage4",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	h.client = stage4v1.NewStage4ServiceClient(conn)
	return h
}

// events returns the whole audit log.
func (h *harness) events(t *testing.T, execID string) []*stage4v1.AuditEvent {
	t.Helper()
	res, err := h.client.ListAuditEvents(context.Background(), &stage4v1.ListAuditEventsRequest{ExecutionId: execID, PageSize: 1000})
	require.NoError(t, err)
	return res.GetAuditEvents()
}

func eventTypes(evs []*stage4v1.AuditEvent) []stage4v1.AuditEventType {
	types := make([]stage4v1.AuditEventType, len(evs))
	for i, e := range evs {
		types[i] = e.GetType()
	}
	return types
}

// runnablePlan is a 3-step plan the reference Stage-3 executes for alice:
// upper-case a text, measure it through a binding, add two numbers.
func runnablePlan(text string) *stage4v1.Plan {
	return &stage4v1.Plan{
		UserId:      "alice",
		TokenHash:   "alice-token",
		TriggerType: "manual",
		Steps: []*stage4v1.Step{
			{Domain: "text", Method: "upper", Parameters: mustStruct(map[string]any{"text": text})},
			{Domain: "text", Method: "length", Parameters: mustStruct(map[string]any{})},
			{Domain: "math", Method: "add", Parameters: mustStruct(map[string]any{"a": 2, "b": 3})},
		},
		DataBindings: []*stage4v1.DataBinding{{SourceStep: 0, SourceOutput: "text", TargetStep: 1, TargetParameter: "text"}},
	}
}

// wireStage3 decodes the plan's bytes as Stage-3's request: what Stage-3
// must receive if forwarding is verbatim.
func wireStage3(t *testing.T, p *stage4v1.Plan) *stage3v1.ExecuteMultiDomainPlanRequest {
	t.Helper()
	b, err := proto.Marshal(p)
	require.NoError(t, err)
	var req stage3v1.ExecuteMultiDomainPlanRequest
	require.NoError(t, proto.Unmarshal(b, &req))
	require.Empty(t, req.ProtoReflect().GetUnknown())
	return &req
}

func requireStatus(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	st, ok := status.FromError(err)
	require.True(t, ok, "not a status error: %v", err)
	require.Equal(t, code, st.Code(), st.Message())
	if reason == "" {
		return
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			require.Equal(t, "stage4", info.GetDomain())
			require.Equal(t, reason, info.GetReason())
			return
		}
	}
	require.Failf(t, "no ErrorInfo", "status %v", st)
}

// TestExecutePlanIsVerbatimBothWays ports the seed's TestVerbatimParameters
// and TestStage3AsBlackBox: Stage-3 receives exactly the plan's fields and
// the caller receives exactly Stage-3's response, with one call each.
func TestExecutePlanIsVerbatimBothWays(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		params map[string]any
	}{
		{name: "flat", params: map[string]any{"a": 1.5, "b": -3}},
		{name: "nested objects and lists", params: map[string]any{"a": 1, "b": 2, "x": map[string]any{"y": []any{1, "two", map[string]any{"z": []any{}}}}}},
		{name: "nulls and bools", params: map[string]any{"a": 0, "b": 0, "n": nil, "t": true, "f": false, "l": []any{nil, nil}}},
		{name: "unicode", params: map[string]any{"a": 1, "b": 1, "ключ": "значение ✓ 𝄞", "emoji": "🙂", "": "empty key"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{})
			plan := &stage4v1.Plan{
				UserId: "alice", TokenHash: "alice-token", TriggerType: "manual",
				Steps: []*stage4v1.Step{{Domain: "math", Method: "add", Parameters: mustStruct(tc.params)}},
			}
			sent := proto.Clone(plan).(*stage4v1.Plan)

			var header metadata.MD
			res, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: plan}, grpc.Header(&header))
			require.NoError(t, err)

			got := h.stage3.Requests()
			require.Len(t, got, 1, "exactly one Stage-3 call")
			require.True(t, proto.Equal(wireStage3(t, sent), got[0]), "Stage-3 received %v", got[0])
			wantBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(sent)
			require.NoError(t, err)
			gotBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(got[0])
			require.NoError(t, err)
			require.Equal(t, wantBytes, gotBytes, "same bytes on the wire")

			// What a fresh reference Stage-3 answers to the same request is
			// what the caller must see, unchanged.
			want, err := stage3ref.NewService().ExecuteMultiDomainPlan(context.Background(), got[0])
			require.NoError(t, err)
			require.True(t, proto.Equal(want, res.GetResult()), "result %v, want %v", res.GetResult(), want)
			require.Equal(t, testFingerprinter.PlanID(sent), res.GetPlanId())
			require.Equal(t, []string{res.GetExecutionId()}, header.Get(HeaderExecutionID))
		})
	}
}

// TestToStage3MatchesTheWireEncoding proves the field-by-field mapping is
// the wire mapping, so no field can be dropped, added or altered.
func TestToStage3MatchesTheWireEncoding(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2, 8, 64} {
		p := validPlan(n)
		require.True(t, proto.Equal(wireStage3(t, p), ToStage3(p)), "n=%d", n)
	}
	require.True(t, proto.Equal(wireStage3(t, runnablePlan("x")), ToStage3(runnablePlan("x"))))
}

// TestExecutePlanReturnsStage3Results ports TestSynchronousExecution and
// TestStage3Preservation: bindings are resolved by Stage-3, every step's
// output comes back, and the audit log holds the three events.
func TestExecutePlanReturnsStage3Results(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	res, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("héllo")})
	require.NoError(t, err)
	results := res.GetResult().GetResults()
	require.Len(t, results, 3)
	require.Equal(t, "HÉLLO", results[0].GetOutput().GetFields()["text"].GetStringValue())
	require.Equal(t, 5.0, results[1].GetOutput().GetFields()["length"].GetNumberValue())
	require.Equal(t, "math", results[2].GetDomain())
	require.Equal(t, 1, h.stage3.Calls())
	require.Equal(t, []stage4v1.AuditEventType{
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED,
	}, eventTypes(h.events(t, res.GetExecutionId())))
	// Stage-3 keeps its own trail, separate from Stage-4's log.
	require.Len(t, h.stage3.Trail(), 1)
}

// invalidPlans has one plan per validation rule group.
func invalidPlans() []struct {
	name string
	plan *stage4v1.Plan
} {
	mod := func(f func(p *stage4v1.Plan)) *stage4v1.Plan {
		p := runnablePlan("x")
		f(p)
		return p
	}
	return []struct {
		name string
		plan *stage4v1.Plan
	}{
		{"no plan", nil},
		{"no user_id", mod(func(p *stage4v1.Plan) { p.UserId = "" })},
		{"no token_hash", mod(func(p *stage4v1.Plan) { p.TokenHash = "" })},
		{"no trigger_type", mod(func(p *stage4v1.Plan) { p.TriggerType = "" })},
		{"no steps", mod(func(p *stage4v1.Plan) { p.Steps = nil; p.DataBindings = nil })},
		{"too many steps", mod(func(p *stage4v1.Plan) { p.Steps = validPlan(257).Steps })},
		{"step without parameters", mod(func(p *stage4v1.Plan) { p.Steps[2].Parameters = nil })},
		{"bad method", mod(func(p *stage4v1.Plan) { p.Steps[2].Method = "Add!" })},
		{"forward binding", mod(func(p *stage4v1.Plan) { p.DataBindings[0].SourceStep, p.DataBindings[0].TargetStep = 1, 0 })},
		{"self binding", mod(func(p *stage4v1.Plan) { p.DataBindings[0].SourceStep = 1 })},
		{"binding out of range", mod(func(p *stage4v1.Plan) { p.DataBindings[0].TargetStep = 3 })},
		{"binding overwrites literal", mod(func(p *stage4v1.Plan) { p.DataBindings[0].TargetStep, p.DataBindings[0].TargetParameter = 2, "a" })},
		{"NaN parameter", mod(func(p *stage4v1.Plan) { p.Steps[2].Parameters.Fields["a"] = structpb.NewNumberValue(math.NaN()) })},
		{"unknown field in parameters", mod(func(p *stage4v1.Plan) {
			p.Steps[0].Parameters.ProtoReflect().SetUnknown([]byte{0xa8, 0x1f, 0x01}) // field 501, varint 1
		})},
	}
}

// TestInvalidPlanNeverReachesStage3 ports TestFailClosed and
// TestFailClosedExhaustiveness: every rule stops the plan before Stage-3,
// with INVALID_ARGUMENT and an audit trail ending in a validation failure.
func TestInvalidPlanNeverReachesStage3(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	for _, tc := range invalidPlans() {
		t.Run(tc.name, func(t *testing.T) {
			var header metadata.MD
			_, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: tc.plan}, grpc.Header(&header))
			requireStatus(t, err, codes.InvalidArgument, "PLAN_INVALID")
			_, verr := h.client.ValidatePlan(context.Background(), &stage4v1.ValidatePlanRequest{Plan: tc.plan})
			require.Equal(t, status.Convert(err).Message(), status.Convert(verr).Message(), "both RPCs give the same first violation")

			ids := header.Get(HeaderExecutionID)
			require.Len(t, ids, 1)
			evs := h.events(t, ids[0])
			require.Equal(t, []stage4v1.AuditEventType{
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED,
			}, eventTypes(evs))
			require.Equal(t, "validation", evs[1].GetDetails().GetFields()["phase"].GetStringValue())
		})
	}
	require.Zero(t, h.stage3.Calls(), "no invalid plan may reach Stage-3")
}

// TestStage3FailuresAreReportedOnce ports the seed's Stage-3 denial and
// error cases: each outcome has its documented code, Stage-3 is called
// exactly once (never retried), and the audit log ends in one failure.
func TestStage3FailuresAreReportedOnce(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		fault  stage3ref.Fault
		plan   func() *stage4v1.Plan
		code   codes.Code
		reason string
	}{
		{name: "token mismatch", plan: func() *stage4v1.Plan { p := runnablePlan("x"); p.TokenHash = "stolen"; return p }, code: codes.PermissionDenied, reason: "STAGE3_REJECTED"},
		{name: "denied", fault: stage3ref.Fault{Deny: true}, code: codes.PermissionDenied, reason: "STAGE3_REJECTED"},
		{name: "unknown method", plan: func() *stage4v1.Plan { p := runnablePlan("x"); p.Steps[2].Method = "divide"; return p }, code: codes.NotFound, reason: "STAGE3_REJECTED"},
		{name: "failing step", fault: stage3ref.Fault{Fail: true, FailAtStep: 1}, code: codes.Unknown, reason: "OUTCOME_UNKNOWN"},
		{name: "slower than the deadline", fault: stage3ref.Fault{Hang: true}, code: codes.Unknown, reason: "OUTCOME_UNKNOWN"},
		{name: "stage3 unavailable after receiving", fault: stage3ref.Fault{Status: status.New(codes.Unavailable, "overloaded")}, code: codes.Unknown, reason: "OUTCOME_UNKNOWN"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{maxDeadline: 300 * time.Millisecond})
			h.stage3.SetFault(tc.fault)
			plan := runnablePlan("x")
			if tc.plan != nil {
				plan = tc.plan()
			}
			var header metadata.MD
			_, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: plan}, grpc.Header(&header))
			requireStatus(t, err, tc.code, tc.reason)
			require.Equal(t, 1, h.stage3.Calls(), "exactly one Stage-3 call, no retry")

			evs := h.events(t, header.Get(HeaderExecutionID)[0])
			require.Equal(t, []stage4v1.AuditEventType{
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED,
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED,
			}, eventTypes(evs))
			require.Equal(t, "stage3", evs[2].GetDetails().GetFields()["phase"].GetStringValue())
			// Stage-3's handler has returned: nothing is left running there.
			require.Eventually(t, func() bool { return len(h.stage3.Trail()) == 1 }, 5*time.Second, time.Millisecond)
		})
	}
}

// TestUnreachableStage3IsRetrySafe: when the request never left Stage-4,
// the caller is told so with UNAVAILABLE.
func TestUnreachableStage3IsRetrySafe(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close()) // nothing listens there now

	h := newHarness(t, harnessOptions{stage3Target: addr})
	_, err = h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("x")})
	requireStatus(t, err, codes.Unavailable, "STAGE3_NOT_REACHED")
	require.Zero(t, h.stage3.Calls())
}

// TestSamePlanTwice ports TestDeterministic and
// TestConsistencyUnderBoundaries: same plan_id, same results, new
// execution_id.
func TestSamePlanTwice(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	first, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("same")})
	require.NoError(t, err)
	second, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("same")})
	require.NoError(t, err)
	require.Equal(t, first.GetPlanId(), second.GetPlanId())
	require.NotEqual(t, first.GetExecutionId(), second.GetExecutionId())
	require.Len(t, first.GetResult().GetResults(), 3)
	for i := range first.GetResult().GetResults() {
		require.True(t, proto.Equal(first.GetResult().GetResults()[i], second.GetResult().GetResults()[i]))
	}
	valid, err := h.client.ValidatePlan(context.Background(), &stage4v1.ValidatePlanRequest{Plan: runnablePlan("same")})
	require.NoError(t, err)
	require.Equal(t, first.GetPlanId(), valid.GetPlanId())
	require.Equal(t, 2, h.stage3.Calls())
}

// TestConcurrentExecutePlan: 100 concurrent calls, each answered with its
// own result, 300 audit events.
func TestConcurrentExecutePlan(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			text := fmt.Sprintf("call-%03d", i)
			res, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan(text)})
			if err != nil {
				errs <- err
				return
			}
			if got := res.GetResult().GetResults()[0].GetOutput().GetFields()["text"].GetStringValue(); got != fmt.Sprintf("CALL-%03d", i) {
				errs <- fmt.Errorf("call %d got %q", i, got)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, n, h.stage3.Calls())
	all := h.events(t, "")
	require.Len(t, all, 3*n)
	for i, ev := range all {
		require.Equal(t, uint64(i+1), ev.GetSequence())
	}
	res, err := segstore.VerifyDir(h.logPath, nil)
	require.NoError(t, err)
	require.Equal(t, 3*n, int(res.Records))
}

// failingFile fails the write that carries the audit log's Nth record; a
// group commit may write several records at once.
type failingFile struct {
	segstore.File
	mu      sync.Mutex
	records int
	failAt  int
}

func (f *failingFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	first := f.records + 1
	f.records += bytes.Count(p, []byte{'\n'})
	fail := first <= f.failAt && f.failAt <= f.records
	f.mu.Unlock()
	if fail {
		return 0, errors.New("injected write failure")
	}
	return f.File.WriteAt(p, off)
}

// TestAuditFailureFailsClosed: a log failing on its Nth append stops the
// plan before Stage-3 unless the plan had already started, and refuses
// every later plan.
func TestAuditFailureFailsClosed(t *testing.T) {
	t.Parallel()
	cases := []struct {
		failAt int
		code   codes.Code
		reason string
		calls  int
	}{
		{failAt: 1, code: codes.Unavailable, reason: "AUDIT_UNAVAILABLE", calls: 0},
		{failAt: 2, code: codes.Unavailable, reason: "AUDIT_UNAVAILABLE", calls: 0},
		{failAt: 3, code: codes.Unknown, reason: "OUTCOME_UNKNOWN", calls: 1},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("append %d fails", tc.failAt), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{fileWrapper: func(f segstore.File) segstore.File {
				return &failingFile{File: f, failAt: tc.failAt}
			}})
			_, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("x")})
			requireStatus(t, err, tc.code, tc.reason)
			require.Equal(t, tc.calls, h.stage3.Calls())
			require.Error(t, h.log.Err())

			_, err = h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("x")})
			requireStatus(t, err, codes.Unavailable, "AUDIT_UNAVAILABLE")
			require.Equal(t, tc.calls, h.stage3.Calls(), "a failed log refuses every later plan")
		})
	}
}

// TestOnlyExecutePlanReachesStage3 ports TestNegativeCapabilityProofs and
// TestNoAutonomy: no RPC and no failure mode reaches Stage-3 except a
// valid, audited ExecutePlan, and that reaches it exactly once.
func TestOnlyExecutePlanReachesStage3(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	ctx := context.Background()

	_, err := h.client.ValidatePlan(ctx, &stage4v1.ValidatePlanRequest{Plan: runnablePlan("x")})
	require.NoError(t, err)
	_, err = h.client.ValidatePlan(ctx, &stage4v1.ValidatePlanRequest{Plan: invalidPlans()[1].plan})
	requireStatus(t, err, codes.InvalidArgument, "PLAN_INVALID")
	_, err = h.client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{})
	require.NoError(t, err)
	_, err = h.client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{PageSize: 5000})
	requireStatus(t, err, codes.InvalidArgument, "")
	_, err = h.client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{PageToken: "forged"})
	requireStatus(t, err, codes.InvalidArgument, "")
	for _, tc := range invalidPlans() {
		_, err = h.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: tc.plan})
		requireStatus(t, err, codes.InvalidArgument, "PLAN_INVALID")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = h.client.ExecutePlan(cancelled, &stage4v1.ExecutePlanRequest{Plan: runnablePlan("x")})
	require.Equal(t, codes.Canceled, status.Code(err))
	require.Zero(t, h.stage3.Calls(), "nothing but a valid ExecutePlan reaches Stage-3")
	started, err := h.client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{Type: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED})
	require.NoError(t, err)
	require.Empty(t, started.GetAuditEvents(), "no execution started")

	_, err = h.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: runnablePlan("x")})
	require.NoError(t, err)
	require.Equal(t, 1, h.stage3.Calls())
}

// TestExecutePlanRefusesWithoutAudit: the handler alone never calls
// Stage-3, so a wiring mistake cannot execute unaudited plans.
func TestExecutePlanRefusesWithoutAudit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{noAudit: true})
	_, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("x")})
	requireStatus(t, err, codes.Internal, "INTERNAL")
	require.Zero(t, h.stage3.Calls())
}

// TestValidatePlanWritesNoEvents: the dry run leaves no trace in the log.
func TestValidatePlanWritesNoEvents(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	_, err := h.client.ValidatePlan(context.Background(), &stage4v1.ValidatePlanRequest{Plan: runnablePlan("x")})
	require.NoError(t, err)
	_, err = h.client.ValidatePlan(context.Background(), &stage4v1.ValidatePlanRequest{})
	requireStatus(t, err, codes.InvalidArgument, "PLAN_INVALID")
	require.Empty(t, h.events(t, ""))
	size := int64(len(logBytes(t, h.logPath)))
	require.Zero(t, size)
}

// TestExecutePlanValidatesAReplacedRequest: the handler skips validation
// only for the very request the audit interceptor validated; a request
// swapped in after it is validated again and never reaches Stage-3.
func TestExecutePlanValidatesAReplacedRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{inner: func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*stage4v1.ExecutePlanRequest); ok {
			bad := proto.Clone(r).(*stage4v1.ExecutePlanRequest)
			bad.Plan.Steps[0].Method = "Not An Identifier"
			return handler(ctx, bad)
		}
		return handler(ctx, req)
	}})
	_, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("x")})
	requireStatus(t, err, codes.InvalidArgument, "PLAN_INVALID")
	require.Zero(t, h.stage3.Calls())
}

// TestExecutePlanForwardsAReplacedRequest: Stage-3 normally gets the plan's
// encoding that the audit interceptor made for plan_id; a valid request
// swapped in after the interceptor is forwarded as it is, never the
// encoding of the one it replaced.
func TestExecutePlanForwardsAReplacedRequest(t *testing.T) {
	t.Parallel()
	replacement := runnablePlan("replacement")
	h := newHarness(t, harnessOptions{inner: func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(ctx, &stage4v1.ExecutePlanRequest{Plan: proto.CloneOf(replacement)})
	}})
	_, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: runnablePlan("original")})
	require.NoError(t, err)
	got := h.stage3.Requests()
	require.Len(t, got, 1)
	require.True(t, proto.Equal(wireStage3(t, replacement), got[0]), "Stage-3 got %v", got[0])
}

// TestAuditLogHoldsNoSecrets: neither the token nor any parameter value
// reaches the audit log, not even through Stage-3's error message, which
// quotes the missing key here.
func TestAuditLogHoldsNoSecrets(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	plan := &stage4v1.Plan{
		UserId: "alice", TokenHash: "alice-token", TriggerType: "manual",
		Steps: []*stage4v1.Step{
			{Domain: "text", Method: "upper", Parameters: mustStruct(map[string]any{"text": "secret-text-value"})},
			{Domain: "json", Method: "get", Parameters: mustStruct(map[string]any{
				"object": map[string]any{"a": "secret-object-value"}, "key": "secret-missing-key",
			})},
		},
	}
	_, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: plan})
	requireStatus(t, err, codes.InvalidArgument, "STAGE3_REJECTED")
	require.Contains(t, status.Convert(err).Message(), "secret-missing-key", "the caller does get Stage-3's message")

	raw := logBytes(t, h.logPath)
	require.Contains(t, string(raw), "EXECUTION_FAILED")
	for _, secret := range []string{"alice-token", "secret-text-value", "secret-object-value", "secret-missing-key"} {
		require.NotContains(t, string(raw), secret)
	}
}

// TestInvalidPlanEventsAreSmall: the flood of the first version (a 257-step
// plan with long names wrote ~198 KB of audit record) is bounded: with the
// real validator, both events of a hostile invalid plan take under 2 KiB,
// and they count the violations instead of quoting them.
func TestInvalidPlanEventsAreSmall(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	p := runnablePlan("x")
	p.UserId = strings.Repeat("u", 5000)
	p.TriggerType = strings.Repeat("T", 5000)
	for range 300 {
		p.Steps = append(p.Steps, &stage4v1.Step{Domain: strings.Repeat("D", 5000), Method: strings.Repeat("M", 5000), Parameters: &structpb.Struct{}})
	}
	_, err := h.client.ExecutePlan(context.Background(), &stage4v1.ExecutePlanRequest{Plan: p})
	requireStatus(t, err, codes.InvalidArgument, "PLAN_INVALID")

	size := int64(len(logBytes(t, h.logPath)))
	t.Logf("both events of the invalid plan: %d bytes", size)
	require.Less(t, size, int64(2048))
	evs := h.events(t, "")
	require.Len(t, evs, 2)
	failedDetails := evs[1].GetDetails().GetFields()
	require.Greater(t, failedDetails["violation_count"].GetNumberValue(), float64(3))
	require.Len(t, failedDetails["violations"].GetListValue().GetValues(), 3)
}
