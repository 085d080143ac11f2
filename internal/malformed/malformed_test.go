package malformed_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/malformed"
	"github.com/stage4/stage4/internal/ratelog"
	"github.com/stage4/stage4/internal/rpcerr"
)

// rawCodec sends a []byte request as it is, so that a test can put any
// bytes on the wire, and decodes responses as gRPC's proto codec does.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return encoding.GetCodecV2(protoenc.Name).Unmarshal(data, v)
}

func (rawCodec) Name() string { return protoenc.Name }

// stub counts the calls that reach a handler.
type stub struct {
	stage4v1.UnimplementedStage4ServiceServer
	calls atomic.Int64
}

func (s *stub) ExecutePlan(context.Context, *stage4v1.ExecutePlanRequest) (*stage4v1.ExecutePlanResponse, error) {
	s.calls.Add(1)
	return &stage4v1.ExecutePlanResponse{ExecutionId: "ran"}, nil
}

func (s *stub) ValidatePlan(context.Context, *stage4v1.ValidatePlanRequest) (*stage4v1.ValidatePlanResponse, error) {
	s.calls.Add(1)
	return &stage4v1.ValidatePlanResponse{}, nil
}

func (s *stub) ListAuditEvents(context.Context, *stage4v1.ListAuditEventsRequest) (*stage4v1.ListAuditEventsResponse, error) {
	s.calls.Add(1)
	return &stage4v1.ListAuditEventsResponse{}, nil
}

// lockedBuffer is a bytes.Buffer that the server's goroutines may write
// while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// server is the stub and health behind a Guard of Stage4Service and health,
// over bufconn.
type server struct {
	conn  *grpc.ClientConn
	stub  *stub
	guard *malformed.Guard
	reg   *prometheus.Registry
	logs  *lockedBuffer
}

func newServer(t *testing.T) *server {
	t.Helper()
	s := &server{stub: &stub{}, reg: prometheus.NewRegistry(), logs: &lockedBuffer{}}
	s.guard = malformed.New([]protoreflect.ServiceDescriptor{
		stage4v1.File_stage4_v1_stage4_proto.Services().ByName("Stage4Service"),
		healthpb.File_grpc_health_v1_health_proto.Services().ByName("Health"),
	}, malformed.WithRegisterer(s.reg),
		malformed.WithLogger(ratelog.New(slog.New(slog.NewJSONHandler(s.logs, nil)), 0)))
	srv := grpc.NewServer(s.guard.ServerOption(), grpc.ChainUnaryInterceptor(s.guard.UnaryServerInterceptor()))
	stage4v1.RegisterStage4ServiceServer(srv, s.stub)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	var err error
	s.conn, err = grpc.NewClient("passthrough:///bufnet", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.conn.Close() })
	return s
}

// refusedCount returns stage4_malformed_requests_total for method.
func (s *server) refusedCount(t *testing.T, method string) float64 {
	t.Helper()
	families, err := s.reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		for _, m := range f.GetMetric() {
			if f.GetName() == "stage4_malformed_requests_total" && m.GetLabel()[0].GetValue() == method {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// planBytes is a Plan whose user_id field holds userID's bytes as they are.
func planBytes(userID string) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType) // Plan.user_id
	return protowire.AppendString(b, userID)
}

// wrap puts msg as field 1 (plan) of a request.
func wrap(msg []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), msg)
}

// deepPlan is a plan whose one step's parameters nest lists depth deep.
func deepPlan(t *testing.T, depth int) []byte {
	t.Helper()
	v := structpb.NewNullValue()
	for range depth {
		v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{v}})
	}
	b, err := proto.Marshal(&stage4v1.ExecutePlanRequest{Plan: &stage4v1.Plan{
		UserId: "alice", TokenHash: "t", TriggerType: "manual",
		Steps: []*stage4v1.Step{{Domain: "text", Method: "upper", Parameters: &structpb.Struct{Fields: map[string]*structpb.Value{"deep": v}}}},
	}})
	require.NoError(t, err)
	return b
}

func TestMalformedRequestsAreInvalidArgument(t *testing.T) {
	t.Parallel()
	const (
		execute  = stage4v1.Stage4Service_ExecutePlan_FullMethodName
		validate = stage4v1.Stage4Service_ValidatePlan_FullMethodName
		list     = stage4v1.Stage4Service_ListAuditEvents_FullMethodName
	)
	tests := []struct {
		name     string
		method   string
		body     []byte
		wantCode codes.Code
		wantMsg  string // part of the status message
	}{
		{name: "garbage bytes", method: execute, body: []byte{0xff, 0xff, 0xff}, wantCode: codes.InvalidArgument,
			wantMsg: "request is not a valid stage4.v1.ExecutePlanRequest"},
		{name: "truncated field", method: validate, body: wrap(planBytes("alice"))[:5], wantCode: codes.InvalidArgument},
		{name: "invalid UTF-8", method: execute, body: wrap(planBytes("al\xffice")), wantCode: codes.InvalidArgument,
			wantMsg: "invalid UTF-8"},
		// protobuf-go's default recursion limit is 10000; each level of
		// the list is two messages, Value and ListValue.
		{name: "nesting beyond the recursion limit", method: execute, body: deepPlan(t, 5001), wantCode: codes.InvalidArgument,
			wantMsg: "exceeded maximum recursion depth"},
		{name: "invalid UTF-8 in a list request", method: list, body: protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "\xc3("),
			wantCode: codes.InvalidArgument, wantMsg: "stage4.v1.ListAuditEventsRequest"},
		{name: "nesting within the limit decodes", method: execute, body: deepPlan(t, 4990), wantCode: codes.OK},
		{name: "a well-formed request reaches the handler", method: execute, body: wrap(planBytes("alice")), wantCode: codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t)
			var resp stage4v1.ExecutePlanResponse
			err := s.conn.Invoke(t.Context(), tt.method, tt.body, &resp, grpc.ForceCodecV2(rawCodec{}))
			require.Equal(t, tt.wantCode, status.Code(err), "%v", err)
			if tt.wantCode == codes.OK {
				require.Equal(t, int64(1), s.stub.calls.Load())
				require.Zero(t, s.refusedCount(t, tt.method))
				return
			}
			require.Equal(t, rpcerr.RequestMalformed, rpcerr.Reason(err))
			require.Contains(t, status.Convert(err).Message(), tt.wantMsg)
			require.Zero(t, s.stub.calls.Load(), "a malformed request reaches no handler")
			require.InDelta(t, 1, s.refusedCount(t, tt.method), 0)
			require.Contains(t, s.logs.String(), `"msg":"malformed request refused"`)
			require.Contains(t, s.logs.String(), `"grpc.method":"`+tt.method+`"`)
			require.Zero(t, malformed.Pending(s.guard), "the codec's note must not outlive the call")
		})
	}
}

// TestStreamedRequestTypesKeepGRPCsAnswer: HealthCheckRequest is also the
// request of the streaming Watch, whose handler never passes the unary
// interceptor, so the Guard leaves its decoding errors to gRPC.
func TestStreamedRequestTypesKeepGRPCsAnswer(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	var resp healthpb.HealthCheckResponse
	err := s.conn.Invoke(t.Context(), healthpb.Health_Check_FullMethodName, []byte{0xff, 0xff}, &resp, grpc.ForceCodecV2(rawCodec{}))
	require.Equal(t, codes.Internal, status.Code(err), "%v", err)
	require.Zero(t, malformed.Pending(s.guard))
}
