package stage3client_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

func TestDescribeMethods(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		describe bool // whether Stage-3 registers DescribeMethods
		opts     []grpc.CallOption
		wantCode codes.Code
	}{
		{name: "the reference answers with its catalogue", describe: true, wantCode: codes.OK},
		{name: "an answer over the caller's limit is refused", describe: true,
			opts: []grpc.CallOption{grpc.MaxCallRecvMsgSize(64)}, wantCode: codes.ResourceExhausted},
		{name: "a Stage-3 from before DescribeMethods answers UNIMPLEMENTED", describe: false, wantCode: codes.Unimplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			client := newClient(t, stage3client.Config{Target: "passthrough:///bufnet", Insecure: true},
				serveStage3(t, stage3ref.NewService(), tt.describe))
			resp, err := client.DescribeMethods(t.Context(), &stage3v1.DescribeMethodsRequest{}, tt.opts...)
			require.Equal(t, tt.wantCode, status.Code(err), "error: %v", err)
			if tt.wantCode == codes.OK {
				require.True(t, proto.Equal(stage3ref.Catalogue(), resp), "got %v", resp)
			}
		})
	}
}

// serveStage3 serves svc over bufconn, as a Stage-3 whose contract has
// DescribeMethods or, without describe, as one built before it existed
// (its service has no such method, so gRPC itself answers UNIMPLEMENTED).
func serveStage3(t *testing.T, svc *stage3ref.Service, describe bool) grpc.DialOption {
	t.Helper()
	if describe {
		return serveBufconn(t, svc)
	}
	desc := stage3v1.Stage3Service_ServiceDesc
	desc.Methods = nil
	for _, m := range stage3v1.Stage3Service_ServiceDesc.Methods {
		if m.MethodName != "DescribeMethods" {
			desc.Methods = append(desc.Methods, m)
		}
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	srv.RegisterService(&desc, svc)
	go func() { _ = srv.Serve(lis) }() // Stop ends it.
	t.Cleanup(srv.Stop)
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	})
}
