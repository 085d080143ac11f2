package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

// fillDisk writes a file at path until the disk is full.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)
			return
		}
	}
}

// TestServeOnAFullDisk fills the disk under a running serve: new plans are
// refused with AUDIT_UNAVAILABLE once the log needs space it cannot get,
// without reaching Stage-3, while the plans already running complete;
// health turns NOT_SERVING; once space is freed, health is SERVING again
// without a restart, plans execute, and the log verifies.
func TestServeOnAFullDisk(t *testing.T) {
	t.Parallel()
	disk := testkit.SmallDisk(t, 16<<20)
	gw := startGatewayOn(t, filepath.Join(disk, "audit"), nil, nil, nil)
	ctx := testContext(t)
	_, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)

	watch, stopWatch := watchHealth(ctx, t, gw)

	ballast := filepath.Join(disk, "ballast")
	fillDisk(t, ballast)

	// Calls until the active segment is full and the next cannot be made.
	var executed atomic.Int64
	var mu sync.Mutex
	var refused []error
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var once sync.Once
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
				if err == nil {
					executed.Add(1)
					continue
				}
				mu.Lock()
				refused = append(refused, err)
				mu.Unlock()
				once.Do(func() { close(stop) })
				return
			}
		})
	}
	wg.Wait()
	require.Positive(t, executed.Load(), "calls executed on the full disk while the segment had room")
	// Every call the log could not take was refused before Stage-3: the
	// calls already running got their result, their terminal events
	// written into the segment's reserve, none OUTCOME_UNKNOWN.
	for _, err := range refused {
		require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		require.Equal(t, "AUDIT_UNAVAILABLE", reasonOf(err), "%v", err)
	}

	for {
		res, err := watch.Recv() // ends with ctx's deadline at the latest
		require.NoError(t, err)
		if res.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			break
		}
	}
	calls := stage3Calls(t, gw)
	_, err = gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.Equal(t, "AUDIT_UNAVAILABLE", reasonOf(err))
	require.Equal(t, calls, stage3Calls(t, gw), "a refused plan never reaches Stage-3")

	require.NoError(t, os.Remove(ballast))
	for {
		res, err := watch.Recv()
		require.NoError(t, err)
		if res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
	}
	stopWatch()
	_, err = gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err, "no restart needed once space is freed")

	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, gw.stage4.exitCode(t))
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", gw.auditLog)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	require.False(t, errors.Is(ctx.Err(), context.DeadlineExceeded))
}

// reasonOf is the ErrorInfo reason of a gRPC error.
func reasonOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// watchHealth watches the health of stage4.v1.Stage4Service on gw until
// the test ends or stop is called, after checking that it starts
// SERVING.
func watchHealth(ctx context.Context, t *testing.T, gw *stage4Process) (watch healthpb.Health_WatchClient, stop func()) {
	t.Helper()
	watchCtx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	watch, err := healthpb.NewHealthClient(gw.conn).Watch(watchCtx, &healthpb.HealthCheckRequest{Service: "stage4.v1.Stage4Service"})
	require.NoError(t, err)
	first, err := watch.Recv()
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, first.GetStatus())
	return watch, stop
}
