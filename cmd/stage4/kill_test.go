package main

import (
	"context"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

// TestServeKilledWhileSealingSegments kills serve (SIGKILL) in the middle
// of a load that seals a segment every few hundred calls: the restarted
// serve opens the log directory (cutting what was torn), every execution
// whose answer reached its caller is listed whole by its id, and
// "stage4 audit verify DIR" finds the log intact.
func TestServeKilledWhileSealingSegments(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	serveArgs := []string{"--audit-readers", "*"}
	gw := startGatewayOn(t, dir, nil, nil, serveArgs)
	ctx := testContext(t)

	// A call makes about 1.6 KB of records, so 1500 seal two segments of
	// a mebibyte (sealed at 15/16).
	const calls = 1500
	var mu sync.Mutex
	var acked []string
	reached := make(chan struct{})
	callCtx, stopCalls := context.WithCancel(ctx)
	defer stopCalls()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for callCtx.Err() == nil {
				res, err := gw.client.ExecutePlan(callCtx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
				if err != nil {
					return // killed
				}
				mu.Lock()
				acked = append(acked, res.GetExecutionId())
				if len(acked) == calls {
					close(reached)
				}
				mu.Unlock()
			}
		})
	}
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("the calls did not finish")
	}
	require.GreaterOrEqual(t, sealedSegments(t, dir), 2)
	// Killed with calls in flight.
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGKILL))
	gw.stage4.exitCode(t)
	stopCalls()
	wg.Wait()
	mu.Lock()
	ids := append([]string(nil), acked...)
	mu.Unlock()
	require.NotEmpty(t, ids)

	restarted := startGatewayOn(t, dir, nil, nil, serveArgs)
	for _, id := range ids { // every acknowledged execution
		requireCompleted(ctx, t, restarted.client, id)
	}
	require.NoError(t, restarted.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, restarted.stage4.exitCode(t))
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", dir)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
}
