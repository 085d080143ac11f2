package stage3client_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// TestExecuteEncodedIsExecute runs the same calls through Execute and
// through ExecuteEncoded with the request's encoding: Stage-3 receives the
// same request, with the same metadata, and the caller gets the same
// response or the same error, with the same size limit.
func TestExecuteEncodedIsExecute(t *testing.T) {
	t.Parallel()
	// concat doubles its input and is returned with it: a small request
	// with a response three times as large.
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
		req        func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest
		fault      codes.Code
		wantCode   codes.Code
		wantReason stage4v1.ErrorReason
		wantCalls  int
	}{
		{name: "forwarded once, response unchanged", req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest { return grow(t, 100) }, wantCalls: 1},
		{name: "request too large is not sent", req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest { return grow(t, 2000) },
			wantCode: codes.InvalidArgument, wantReason: rpcerr.PlanInvalid},
		{name: "response too large after Stage-3 ran", req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest { return grow(t, 400) },
			wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown, wantCalls: 1},
		{name: "rejected by Stage-3", req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest { return upperPlan(t, "x") },
			fault: codes.PermissionDenied, wantCode: codes.PermissionDenied, wantReason: rpcerr.Stage3Rejected, wantCalls: 1},
		{name: "failed in Stage-3", req: func(t *testing.T) *stage3v1.ExecuteMultiDomainPlanRequest { return upperPlan(t, "x") },
			fault: codes.Internal, wantCode: codes.Unknown, wantReason: rpcerr.OutcomeUnknown, wantCalls: 1},
	}
	type outcome struct {
		resp     *stage3v1.ExecuteMultiDomainPlanResponse
		received []*stage3v1.ExecuteMultiDomainPlanRequest
		md       metadata.MD
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			run := func(encoded bool) outcome {
				svc := stage3ref.NewService()
				if tt.fault != codes.OK {
					svc.SetFault(stage3ref.Fault{Status: status.New(tt.fault, "from stage3")})
				}
				mds := make(chan metadata.MD, 1)
				capture := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
					md, _ := metadata.FromIncomingContext(ctx)
					mds <- md
					return handler(ctx, req)
				}
				client := newBufconn(t, svc, stage3client.Config{MaxMessageBytes: 1000}, grpc.UnaryInterceptor(capture))
				ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("x-request-id", "r-1", "authorization", "Bearer secret"))
				req := tt.req(t)
				var resp *stage3v1.ExecuteMultiDomainPlanResponse
				var err error
				if encoded {
					b, merr := proto.MarshalOptions{Deterministic: true}.Marshal(req)
					require.NoError(t, merr)
					resp, err = client.ExecuteEncoded(ctx, b)
				} else {
					resp, err = client.Execute(ctx, req)
				}
				require.Equal(t, tt.wantCode, status.Code(err), "error: %v", err)
				require.Equal(t, tt.wantReason, rpcerr.Reason(err))
				require.Equal(t, tt.wantCalls, svc.Calls())
				out := outcome{resp: resp, received: svc.Requests()}
				if tt.wantCalls > 0 {
					out.md = <-mds
				}
				return out
			}
			want, got := run(false), run(true)
			require.True(t, proto.Equal(want.resp, got.resp), "response %v, want %v", got.resp, want.resp)
			require.Len(t, got.received, len(want.received))
			for i := range want.received {
				require.True(t, proto.Equal(want.received[i], got.received[i]), "Stage-3 got %v, want %v", got.received[i], want.received[i])
			}
			if tt.wantCalls > 0 {
				require.Equal(t, []string{"r-1"}, got.md.Get("x-request-id"))
				require.Empty(t, got.md.Get("authorization"))
			}
		})
	}
}

func TestExecuteEncodedNotReached(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())

	client := newClient(t, stage3client.Config{Target: addr, Insecure: true})
	b, err := proto.Marshal(upperPlan(t, "x"))
	require.NoError(t, err)
	_, err = client.ExecuteEncoded(t.Context(), b)
	requireStage4Error(t, err, codes.Unavailable, rpcerr.Stage3NotReached)
}
