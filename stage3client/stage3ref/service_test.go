package stage3ref_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// dial serves svc over bufconn and returns a generated client for it.
func dial(t *testing.T, svc *stage3ref.Service) stage3v1.Stage3ServiceClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := stage3ref.Serve(lis, svc)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	return stage3v1.NewStage3ServiceClient(conn)
}

func obj(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	require.NoError(t, err)
	return s
}

// plan is a plan by alice with her default token.
func plan(steps ...*stage3v1.Step) *stage3v1.ExecuteMultiDomainPlanRequest {
	return &stage3v1.ExecuteMultiDomainPlanRequest{UserId: "alice", TokenHash: "alice-token", TriggerType: "manual", Steps: steps}
}

func step(t *testing.T, domain, method string, params map[string]any) *stage3v1.Step {
	t.Helper()
	return &stage3v1.Step{Domain: domain, Method: method, Parameters: obj(t, params)}
}

func TestDomainMethods(t *testing.T) {
	t.Parallel()
	client := dial(t, stage3ref.NewService())
	tests := []struct {
		name   string
		domain string
		method string
		params map[string]any
		want   map[string]any
	}{
		{name: "text.upper", domain: "text", method: "upper", params: map[string]any{"text": "héllo"}, want: map[string]any{"text": "HÉLLO"}},
		{name: "text.lower", domain: "text", method: "lower", params: map[string]any{"text": "HeLLo"}, want: map[string]any{"text": "hello"}},
		{name: "text.length counts runes", domain: "text", method: "length", params: map[string]any{"text": "héllo"}, want: map[string]any{"length": 5}},
		{name: "text.concat", domain: "text", method: "concat", params: map[string]any{"left": "foo", "right": "bar"}, want: map[string]any{"text": "foobar"}},
		{name: "math.add", domain: "math", method: "add", params: map[string]any{"a": 2, "b": 3.5}, want: map[string]any{"result": 5.5}},
		{name: "math.multiply", domain: "math", method: "multiply", params: map[string]any{"a": 4, "b": -2}, want: map[string]any{"result": -8}},
		{name: "math.sum", domain: "math", method: "sum", params: map[string]any{"values": []any{1, 2, 3.5}}, want: map[string]any{"result": 6.5}},
		{name: "math.sum of nothing", domain: "math", method: "sum", params: map[string]any{"values": []any{}}, want: map[string]any{"result": 0}},
		{name: "json.get", domain: "json", method: "get", params: map[string]any{"object": map[string]any{"a": []any{1, "x"}}, "key": "a"}, want: map[string]any{"value": []any{1, "x"}}},
		{name: "json.keys sorted", domain: "json", method: "keys", params: map[string]any{"object": map[string]any{"b": 1, "a": 2}}, want: map[string]any{"keys": []any{"a", "b"}}},
		{name: "json.merge patch wins", domain: "json", method: "merge",
			params: map[string]any{"base": map[string]any{"a": 1, "b": 2}, "patch": map[string]any{"b": 3, "c": 4}},
			want:   map[string]any{"object": map[string]any{"a": 1, "b": 3, "c": 4}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp, err := client.ExecuteMultiDomainPlan(t.Context(), plan(step(t, tt.domain, tt.method, tt.params)))
			require.NoError(t, err)
			require.Len(t, resp.GetResults(), 1)
			want := &stage3v1.StepResult{StepIndex: 0, Domain: tt.domain, Method: tt.method, Output: obj(t, tt.want)}
			requireProtoEqual(t, want, resp.GetResults()[0])
		})
	}
}

func requireProtoEqual(t *testing.T, want, got proto.Message, msgAndArgs ...any) {
	t.Helper()
	require.True(t, proto.Equal(want, got), "want %v\ngot  %v\n%s", want, got, fmt.Sprint(msgAndArgs...))
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		req      func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "wrong token", wantCode: codes.PermissionDenied, wantMsg: `user "alice" is not authorized`,
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				r := plan(step(t, "text", "upper", map[string]any{"text": "x"}))
				r.TokenHash = "bob-token"
				return r
			}},
		{name: "unknown user", wantCode: codes.PermissionDenied, wantMsg: `user "mallory" is not authorized`,
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				r := plan(step(t, "text", "upper", map[string]any{"text": "x"}))
				r.UserId = "mallory"
				return r
			}},
		{name: "unknown domain", wantCode: codes.NotFound, wantMsg: "step 1: unknown method mail.send",
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				return plan(step(t, "text", "upper", map[string]any{"text": "x"}), step(t, "mail", "send", nil))
			}},
		{name: "unknown method", wantCode: codes.NotFound, wantMsg: "step 0: unknown method text.reverse",
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				return plan(step(t, "text", "reverse", map[string]any{"text": "x"}))
			}},
		{name: "wrong parameter type", wantCode: codes.InvalidArgument, wantMsg: `step 0 (math.add): parameter "b" has the wrong type`,
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				return plan(step(t, "math", "add", map[string]any{"a": 1, "b": "2"}))
			}},
		{name: "missing parameter", wantCode: codes.InvalidArgument, wantMsg: `step 0 (text.upper): parameter "text" is required`,
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				return plan(step(t, "text", "upper", nil))
			}},
		{name: "non-number in sum", wantCode: codes.InvalidArgument, wantMsg: `step 0 (math.sum): parameter "values"[1] must be a number`,
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				return plan(step(t, "math", "sum", map[string]any{"values": []any{1, true}}))
			}},
		{name: "overflow", wantCode: codes.InvalidArgument, wantMsg: "step 0 (math.multiply): result is not a finite number",
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				return plan(step(t, "math", "multiply", map[string]any{"a": 1e300, "b": 1e300}))
			}},
		{name: "json.get missing key", wantCode: codes.InvalidArgument, wantMsg: `step 0 (json.get): object has no key "z"`,
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				return plan(step(t, "json", "get", map[string]any{"object": map[string]any{}, "key": "z"}))
			}},
		{name: "binding source not before target", wantCode: codes.InvalidArgument, wantMsg: "binding 0: need source_step < target_step < 2, got 1 and 1",
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				r := plan(step(t, "text", "upper", map[string]any{"text": "x"}), step(t, "text", "upper", nil))
				r.DataBindings = []*stage3v1.DataBinding{{SourceStep: 1, SourceOutput: "text", TargetStep: 1, TargetParameter: "text"}}
				return r
			}},
		{name: "binding target out of range", wantCode: codes.InvalidArgument, wantMsg: "binding 0: need source_step < target_step < 1, got 0 and 5",
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				r := plan(step(t, "text", "upper", map[string]any{"text": "x"}))
				r.DataBindings = []*stage3v1.DataBinding{{SourceStep: 0, SourceOutput: "text", TargetStep: 5, TargetParameter: "text"}}
				return r
			}},
		{name: "binding output missing", wantCode: codes.FailedPrecondition, wantMsg: `binding 0: step 0 has no output "result"`,
			req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
				r := plan(step(t, "text", "upper", map[string]any{"text": "x"}), step(t, "text", "upper", nil))
				r.DataBindings = []*stage3v1.DataBinding{{SourceStep: 0, SourceOutput: "result", TargetStep: 1, TargetParameter: "text"}}
				return r
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := stage3ref.NewService()
			req := tt.req(t)
			_, err := dial(t, svc).ExecuteMultiDomainPlan(t.Context(), req)
			require.Equal(t, tt.wantCode, status.Code(err), "error: %v", err)
			require.Equal(t, tt.wantMsg, status.Convert(err).Message())
			require.NotContains(t, status.Convert(err).Message(), req.GetTokenHash())
			trail := svc.Trail()
			require.Len(t, trail, 1)
			require.Equal(t, tt.wantCode, trail[0].Code)
		})
	}
}

func TestWithTokens(t *testing.T) {
	t.Parallel()
	client := dial(t, stage3ref.NewService(stage3ref.WithTokens(map[string]string{"carol": "c-token"})))
	tests := []struct {
		name  string
		user  string
		token string
		want  codes.Code
	}{
		{name: "listed user", user: "carol", token: "c-token", want: codes.OK},
		{name: "default user no longer listed", user: "alice", token: "alice-token", want: codes.PermissionDenied},
		{name: "token prefix", user: "carol", token: "c-toke", want: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := plan(step(t, "text", "upper", map[string]any{"text": "x"}))
			req.UserId, req.TokenHash = tt.user, tt.token
			_, err := client.ExecuteMultiDomainPlan(t.Context(), req)
			require.Equal(t, tt.want, status.Code(err))
		})
	}
}

func TestBindingsFeedLaterStepsWithoutMutatingTheRequest(t *testing.T) {
	t.Parallel()
	svc := stage3ref.NewService()
	req := plan(
		step(t, "text", "upper", map[string]any{"text": "ab"}),
		step(t, "text", "concat", map[string]any{"right": "!"}),
		step(t, "text", "length", map[string]any{}),
	)
	req.DataBindings = []*stage3v1.DataBinding{
		{SourceStep: 0, SourceOutput: "text", TargetStep: 1, TargetParameter: "left"},
		{SourceStep: 1, SourceOutput: "text", TargetStep: 2, TargetParameter: "text"},
	}
	sent := proto.CloneOf(req)

	resp, err := dial(t, svc).ExecuteMultiDomainPlan(t.Context(), req)
	require.NoError(t, err)

	want := &stage3v1.ExecuteMultiDomainPlanResponse{
		ExecutionId: "s3-1",
		Results: []*stage3v1.StepResult{
			{StepIndex: 0, Domain: "text", Method: "upper", Output: obj(t, map[string]any{"text": "AB"})},
			{StepIndex: 1, Domain: "text", Method: "concat", Output: obj(t, map[string]any{"text": "AB!"})},
			{StepIndex: 2, Domain: "text", Method: "length", Output: obj(t, map[string]any{"length": 3})},
		},
	}
	requireProtoEqual(t, want, resp)
	got := svc.Requests()
	require.Len(t, got, 1)
	requireProtoEqual(t, sent, got[0], "the recorded request must be what was sent")
}

func TestFaults(t *testing.T) {
	t.Parallel()
	twoSteps := func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest {
		return plan(step(t, "text", "upper", map[string]any{"text": "a"}), step(t, "text", "lower", map[string]any{"text": "B"}))
	}
	tests := []struct {
		name     string
		fault    stage3ref.Fault
		timeout  time.Duration
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "deny", fault: stage3ref.Fault{Deny: true}, wantCode: codes.PermissionDenied, wantMsg: `user "alice" is not authorized`},
		{name: "fail at step 1", fault: stage3ref.Fault{Fail: true, FailAtStep: 1}, wantCode: codes.Internal, wantMsg: "step 1 failed"},
		{name: "fail at step 0", fault: stage3ref.Fault{Fail: true, FailAtStep: 0}, wantCode: codes.Internal, wantMsg: "step 0 failed"},
		{name: "status", fault: stage3ref.Fault{Status: status.New(codes.ResourceExhausted, "busy")}, wantCode: codes.ResourceExhausted, wantMsg: "busy"},
		{name: "delay shorter than deadline", fault: stage3ref.Fault{Delay: 20 * time.Millisecond}, timeout: time.Minute, wantCode: codes.OK},
		{name: "delay past deadline", fault: stage3ref.Fault{Delay: time.Minute}, timeout: 50 * time.Millisecond, wantCode: codes.DeadlineExceeded},
		{name: "hang until deadline", fault: stage3ref.Fault{Hang: true}, timeout: 50 * time.Millisecond, wantCode: codes.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := stage3ref.NewService()
			svc.SetFault(tt.fault)
			start := time.Now()
			ctx := t.Context()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			_, err := dial(t, svc).ExecuteMultiDomainPlan(ctx, twoSteps(t))
			require.Equal(t, tt.wantCode, status.Code(err), "error: %v", err)
			if tt.wantMsg != "" {
				require.Equal(t, tt.wantMsg, status.Convert(err).Message())
			}
			require.GreaterOrEqual(t, time.Since(start), min(tt.fault.Delay, tt.timeout))
			require.Equal(t, 1, svc.Calls(), "even refused calls are recorded")
		})
	}
}

func TestHangEndsWhenServerCloses(t *testing.T) {
	t.Parallel()
	svc := stage3ref.NewService()
	svc.SetFault(stage3ref.Fault{Hang: true})
	srv, err := stage3ref.NewServer(svc)
	require.NoError(t, err)
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })

	errc := make(chan error, 1)
	go func() {
		_, err := stage3v1.NewStage3ServiceClient(conn).ExecuteMultiDomainPlan(t.Context(), plan(step(t, "text", "upper", map[string]any{"text": "x"})))
		errc <- err
	}()
	<-svc.Received(1)
	require.NoError(t, srv.Close())
	require.Equal(t, codes.Unavailable, status.Code(<-errc))
}

func TestReceived(t *testing.T) {
	t.Parallel()
	svc := stage3ref.NewService()
	client := dial(t, svc)
	second := svc.Received(2)
	req := plan(step(t, "text", "upper", map[string]any{"text": "x"}))

	_, err := client.ExecuteMultiDomainPlan(t.Context(), req)
	require.NoError(t, err)
	select {
	case <-second:
		t.Fatal("Received(2) closed after one request")
	default:
	}
	_, err = client.ExecuteMultiDomainPlan(t.Context(), req)
	require.NoError(t, err)
	<-second
	<-svc.Received(1) // already satisfied: closed at once
}

func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	svc := stage3ref.NewService()
	client := dial(t, svc)
	const n = 32
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req := plan(step(t, "math", "add", map[string]any{"a": i, "b": 1}))
			resp, err := client.ExecuteMultiDomainPlan(t.Context(), req)
			if err != nil {
				ids <- "error: " + err.Error()
				return
			}
			ids <- resp.GetExecutionId()
		})
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		require.Regexp(t, `^s3-\d+$`, id)
		require.False(t, seen[id], "duplicate execution id %s", id)
		seen[id] = true
	}
	require.Len(t, seen, n)
	require.Equal(t, n, svc.Calls())
	require.Len(t, svc.Requests(), n)
	require.Len(t, svc.Trail(), n)
}

func TestRequestsAreCopies(t *testing.T) {
	t.Parallel()
	svc := stage3ref.NewService()
	_, err := dial(t, svc).ExecuteMultiDomainPlan(t.Context(), plan(step(t, "text", "upper", map[string]any{"text": "x"})))
	require.NoError(t, err)
	svc.Requests()[0].UserId = "changed"
	require.Equal(t, "alice", svc.Requests()[0].GetUserId())
}

// TestRecordingIsBounded: a long-running reference Stage-3 keeps only the
// last 10000 requests and trail entries, but counts every call.
func TestRecordingIsBounded(t *testing.T) {
	t.Parallel()
	s := stage3ref.NewService()
	const limit = 10000 // Requests and Trail keep the last 10000
	req := &stage3v1.ExecuteMultiDomainPlanRequest{UserId: "alice", TokenHash: "alice-token", TriggerType: "manual"}
	const extra = 5
	for range limit + extra {
		_, err := s.ExecuteMultiDomainPlan(context.Background(), req)
		require.NoError(t, err)
	}
	require.Equal(t, limit+extra, s.Calls())
	require.Len(t, s.Requests(), limit)
	trail := s.Trail()
	require.Len(t, trail, limit)
	require.Equal(t, fmt.Sprintf("s3-%d", limit+extra), trail[len(trail)-1].ExecutionID)
	require.Equal(t, fmt.Sprintf("s3-%d", extra+1), trail[0].ExecutionID)
}

// TestDescribeMethodsListsTheTable checks that the catalogue names every
// method the executor runs and nothing else, whatever the fault: a listed
// method is never NOT_FOUND, and a hanging executor still describes itself.
func TestDescribeMethodsListsTheTable(t *testing.T) {
	t.Parallel()
	svc := stage3ref.NewService()
	svc.SetFault(stage3ref.Fault{Hang: true})
	client := dial(t, svc)
	resp, err := client.DescribeMethods(t.Context(), &stage3v1.DescribeMethodsRequest{})
	require.NoError(t, err)
	requireProtoEqual(t, stage3ref.Catalogue(), resp)
	listed := map[string][]string{}
	for _, d := range resp.GetDomains() {
		for _, m := range d.GetMethods() {
			listed[d.GetName()] = append(listed[d.GetName()], m.GetName())
			require.NotEmpty(t, m.GetDescription(), "%s.%s", d.GetName(), m.GetName())
			require.Equal(t, "object", m.GetParametersSchema().GetFields()["type"].GetStringValue(), "%s.%s", d.GetName(), m.GetName())
			require.False(t, m.GetParametersSchema().GetFields()["additionalProperties"].GetBoolValue(), "%s.%s forbids other parameters", d.GetName(), m.GetName())
		}
	}
	require.Equal(t, map[string][]string{
		"json": {"get", "keys", "merge"},
		"math": {"add", "multiply", "sum"},
		"text": {"concat", "length", "lower", "upper"},
	}, listed)

	svc.SetFault(stage3ref.Fault{})
	for domain, methods := range listed {
		for _, m := range methods {
			_, err := client.ExecuteMultiDomainPlan(t.Context(), plan(step(t, domain, m, nil)))
			require.Equal(t, codes.InvalidArgument, status.Code(err), "%s.%s runs (and wants parameters): %v", domain, m, err)
		}
	}
	require.Equal(t, 10, svc.Calls(), "only executions are counted, not DescribeMethods")
}
