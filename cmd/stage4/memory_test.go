package main

import (
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
)

// TestServeBurstOfMaximumSizeRequests sends 200 concurrent requests of the
// largest size serve accepts (4 MiB, so every one is an invalid plan) to
// the real binary: each gets its refusal, the peak resident set stays under
// 1 GiB, and the memory is returned once the burst is over. "stage4load
// burst" measures the same with other shapes and sizes.
func TestServeBurstOfMaximumSizeRequests(t *testing.T) {
	t.Parallel()
	calls, conns := 200, 20
	race := slices.Contains(buildFlags, "-race")
	if race {
		// The race detector's shadow memory and slowness make the memory
		// figures meaningless; the burst still has to complete and end
		// with the memory release.
		calls, conns = 24, 6
	}
	gw := startGateway(t, nil, nil)
	req := maximumSizeRequest(t, defaultMaxMessageBytes)

	clients := make([]stage4v1.Stage4ServiceClient, conns)
	for i := range clients {
		conn, err := grpc.NewClient(gw.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		clients[i] = stage4v1.NewStage4ServiceClient(conn)
	}
	ctx := testContext(t)
	errs := make(chan error, calls)
	start := make(chan struct{}) // the calls start together
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			<-start
			_, err := clients[i%conns].ExecutePlan(ctx, req)
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		require.Equal(t, rpcerr.PlanInvalid, rpcerr.Reason(err))
	}

	pid := gw.stage4.cmd.Process.Pid
	peak := procStatusKiB(t, pid, "VmHWM:")
	gw.stage4.stderr.waitForLog(t, "returned memory to the system after a burst of large requests", nil)
	after := procStatusKiB(t, pid, "VmRSS:")
	t.Logf("%d calls of %d bytes: peak RSS %d MiB, after the release %d MiB", calls, proto.Size(req), peak>>10, after>>10)
	if !race {
		require.Less(t, peak, int64(1<<20), "peak RSS in KiB")
		require.Less(t, after, int64(256<<10), "RSS in KiB after the burst")
	}
}

// maximumSizeRequest is an ExecutePlan request of just under size bytes,
// most of it one string parameter.
func maximumSizeRequest(t *testing.T, size int) *stage4v1.ExecutePlanRequest {
	t.Helper()
	req := &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)}
	text := structpb.NewStringValue("")
	req.Plan.Steps[0].Parameters.Fields["text"] = text
	text.Kind = &structpb.Value_StringValue{StringValue: strings.Repeat("x", size-proto.Size(req)-64)} // each enclosing length grows with it
	require.LessOrEqual(t, proto.Size(req), size)
	return req
}
