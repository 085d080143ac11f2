package catalog

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// TestCompileTimeout: a compilation that overruns fails the refresh, and
// no other starts until it has ended, so a slow schema costs one
// goroutine at most.
func TestCompileTimeout(t *testing.T) {
	t.Parallel()
	lis := bufconn.Listen(1 << 20)
	srv := stage3ref.Serve(lis, stage3ref.NewService())
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })

	c, err := New(stage3v1.NewStage3ServiceClient(conn), WithCompileTimeout(time.Millisecond))
	require.NoError(t, err)
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	c.compileFunc = func(resp *stage3v1.DescribeMethodsResponse) (*Catalog, error) {
		started <- struct{}{}
		<-release
		return Compile(resp)
	}
	require.ErrorContains(t, c.Refresh(t.Context()), "compile: took longer than 1ms")
	require.Equal(t, StatusUnavailable, c.Snapshot().Status)
	require.ErrorContains(t, c.Refresh(t.Context()), "compile: the previous answer is still being compiled")
	require.Len(t, started, 1, "no second compilation while the first runs")

	close(release)
	<-c.compiling // the abandoned compilation ends
	c.compileTimeout = DefaultCompileTimeout
	require.NoError(t, c.Refresh(t.Context()))
	require.Equal(t, StatusCurrent, c.Snapshot().Status)
	require.Len(t, started, 2)
}
