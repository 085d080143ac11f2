package main

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/faultfs"
	"github.com/stage4/stage4/internal/netfault"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/rpcerr"
)

// TestServeCrashLosesOnlyUnsyncedBytes runs serve with its audit log
// directory on a file system that loses every write no fsync covered
// (faultfs), kills it (SIGKILL) under the load of 8 callers, simulates a
// crash of the machine, and restarts it on what is left, a few times.
// Every other kill comes while fsync hangs, so that written records are
// certainly not synced: the crash loses them. Each restart starts; every execution whose ExecutePlan returned OK is
// listed whole; every execution the log holds is closed (those left open,
// as interrupted); Stage-3 was never called more often than the log holds
// a durable EXECUTION_STARTED; and "stage4 audit verify" finds the log
// intact.
func TestServeCrashLosesOnlyUnsyncedBytes(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	dir := filepath.Join(fsys.Dir(), "audit")
	serveArgs := []string{"--audit-readers", "*"}
	// Stage-3 takes a while, so that the kill finds executions in it,
	// their EXECUTION_STARTED synced, their terminal event not written.
	stage3Args := []string{"--delay", "20ms"}
	ctx := testContext(t)

	const iterations, callsPerIteration = 3, 100
	var acked, unanswered []string
	stage3Calls, lost := 0, 0
	for i := range iterations {
		gw := startGatewayOn(t, dir, nil, stage3Args, serveArgs)
		var mu sync.Mutex
		var ok, failed []string
		reached := make(chan struct{})
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for {
					id, err := executeCall(ctx, t, gw.client)
					mu.Lock()
					if err != nil {
						if id != "" {
							failed = append(failed, id)
						}
						mu.Unlock()
						return // killed
					}
					ok = append(ok, id)
					if len(ok) == callsPerIteration {
						close(reached)
					}
					mu.Unlock()
				}
			})
		}
		select {
		case <-reached:
		case <-ctx.Done():
			t.Fatalf("iteration %d: the calls did not finish", i)
		}
		if i%2 == 1 {
			// Killed between a write of records and its fsync, for
			// certain: only the segments' syncs hang, so that the
			// head file's sync cannot hold the writes up first.
			fsys.HangSyncsOf(func(name string) bool { return strings.HasSuffix(name, ".jsonl") })
			require.NoError(t, fsys.WaitHungSyncs(ctx, 1))
		}
		require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGKILL))
		gw.stage4.exitCode(t)
		wg.Wait()
		require.NoError(t, gw.stage3.cmd.Process.Signal(syscall.SIGTERM))
		require.Equal(t, 0, gw.stage3.exitCode(t))
		stage3Calls += stage3Started(gw.stage3)
		acked = append(acked, ok...)
		unanswered = append(unanswered, failed...)
		before := logBytes(t, dir)
		fsys.Crash()
		after := logBytes(t, dir)
		require.LessOrEqual(t, after, before)
		lost += before - after
	}

	gw := startGatewayOn(t, dir, nil, nil, serveArgs)
	for _, id := range acked {
		requireCompleted(ctx, t, gw.client, id)
	}
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, gw.stage4.exitCode(t))

	events := logEvents(t, dir)
	requireAllClosed(t, events)
	closed := 0
	for _, id := range unanswered {
		if evs, ok := events[id]; ok && interrupted(evs) {
			closed++
		}
	}
	for id, evs := range events {
		if interrupted(evs) {
			require.Contains(t, unanswered, id, "only executions whose call was cut off are interrupted")
		}
	}
	t.Logf("%d iterations: %d calls acknowledged, %d cut off (%d of them closed as interrupted), %d Stage-3 calls, %d executions in the log, %d bytes of records lost in the crashes",
		iterations, len(acked), len(unanswered), closed, stage3Calls, len(events), lost)
	require.Positive(t, lost, "the crashes lost the records written but not synced")
	require.Positive(t, closed, "the kills left executions open, and restarts closed them")
	require.LessOrEqual(t, stage3Calls, startedCount(events), "a Stage-3 call without a durable EXECUTION_STARTED")

	code, stdout, stderr := runStage4(t, nil, "audit", "verify", dir)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
	require.Contains(t, stdout, "OK")
}

// TestServeFsyncFails makes the audit log's fsync fail with EIO: the next
// plan is refused with AUDIT_UNAVAILABLE without reaching Stage-3, health
// turns NOT_SERVING, and the log stays failed even once the disk is
// healthy again (a failed fsync is not retried); after a restart the
// acknowledged execution is listed whole, the refused one is closed, and
// the log verifies.
func TestServeFsyncFails(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	dir := filepath.Join(fsys.Dir(), "audit")
	serveArgs := []string{"--audit-readers", "*"}
	gw := startGatewayOn(t, dir, nil, nil, serveArgs)
	ctx := testContext(t)
	acked, err := executeCall(ctx, t, gw.client)
	require.NoError(t, err)
	watch, stopWatch := watchHealth(ctx, t, gw)
	require.Equal(t, 1, stage3Started(gw.stage3))

	fsys.FailSyncs(syscall.EIO)
	refused, err := boundedCall(t, gw.client)
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.Equal(t, rpcerr.AuditUnavailable, rpcerr.Reason(err))
	require.NotEmpty(t, refused)
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_NOT_SERVING, answerBound)
	stopWatch()

	fsys.Heal()
	_, err = boundedCall(t, gw.client)
	require.Equal(t, codes.Unavailable, status.Code(err), "after a failed fsync the log stays failed until a restart: %v", err)
	require.Equal(t, rpcerr.AuditUnavailable, rpcerr.Reason(err))
	require.Equal(t, 1, stage3Started(gw.stage3), "refused plans never reach Stage-3")
	require.Equal(t, 1, stage3Calls(t, gw))

	fields := gw.stage4.stderr.waitForLog(t, "audit store unavailable; refusing plans", map[string]any{"level": "ERROR"})
	require.Contains(t, fields["error"], "fsync")
	require.Contains(t, fields["error"], syscall.EIO.Error())
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, gw.stage4.exitCode(t))
	restarted := startGatewayOn(t, dir, nil, nil, serveArgs)
	requireCompleted(ctx, t, restarted.client, acked)
	_, err = executeCall(ctx, t, restarted.client)
	require.NoError(t, err, "a restart on a healthy disk serves again")
	require.NoError(t, restarted.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, restarted.stage4.exitCode(t))

	events := logEvents(t, dir)
	requireAllClosed(t, events)
	if evs, ok := events[refused]; ok {
		require.NotContains(t, eventTypes(evs), stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED)
	}
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", dir)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
}

// TestServeFsyncHangs hangs the audit log's fsync: a call sent without a
// deadline is still answered, UNAVAILABLE, within answerBound, without
// reaching Stage-3, and health turns NOT_SERVING; once the disk answers
// again and serve restarts on it, the log verifies.
func TestServeFsyncHangs(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	dir := filepath.Join(fsys.Dir(), "audit")
	serveArgs := []string{"--audit-readers", "*"}
	gw := startGatewayOn(t, dir, nil, nil, serveArgs)
	ctx := testContext(t)
	acked, err := executeCall(ctx, t, gw.client)
	require.NoError(t, err)
	watch, stopWatch := watchHealth(ctx, t, gw)

	fsys.HangSyncs()
	type result struct {
		id  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		id, err := boundedCall(t, gw.client)
		done <- result{id, err}
	}()
	require.NoError(t, fsys.WaitHungSyncs(ctx, 1), "the call's fsync hangs")
	r := <-done
	require.Equal(t, codes.Unavailable, status.Code(r.err), "%v", r.err)
	require.Equal(t, rpcerr.AuditUnavailable, rpcerr.Reason(r.err))
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_NOT_SERVING, answerBound)
	stopWatch()
	require.Equal(t, 1, stage3Started(gw.stage3), "a plan whose EXECUTION_STARTED is not durable never reaches Stage-3")

	fsys.Heal()
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGKILL))
	gw.stage4.exitCode(t)
	fsys.Crash()
	restarted := startGatewayOn(t, dir, nil, nil, serveArgs)
	requireCompleted(ctx, t, restarted.client, acked)
	require.NoError(t, restarted.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, restarted.stage4.exitCode(t))
	events := logEvents(t, dir)
	requireAllClosed(t, events)
	if evs, ok := events[r.id]; ok {
		require.NotContains(t, eventTypes(evs), stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED)
	}
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", dir)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
}

// partitionedGateway starts the reference Stage-3 with stage3Args and
// serve on a new PostgreSQL database reached through a netfault proxy.
// serveOn starts another serve, on the same Stage-3, with its audit log
// at auditLog (the database's URL, without the proxy, for a restart).
func partitionedGateway(t *testing.T, stage3Args ...string) (gw *stage4Process, proxy *netfault.Proxy, dbURL string, serveOn func(auditLog string) *stage4Process) {
	t.Helper()
	dbURL = pgtest.NewDatabase(t)
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	proxy = netfault.New(t, u.Host)
	proxied := *u
	proxied.Host = proxy.Addr()
	q := proxied.Query()
	q.Set("sslmode", "disable")
	proxied.RawQuery = q.Encode()

	s3 := start(t, nil, append([]string{"reference-stage3", "--listen", "127.0.0.1:0"}, stage3Args...)...)
	s3Addr, _ := s3.servingAddr(t)
	serveOn = func(auditLog string) *stage4Process {
		s4 := start(t, nil, "serve", "--audit-readers", "*", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
			"--stage3-addr", s3Addr, "--stage3-insecure", "--audit-log", auditLog, "--replica-name", "r1")
		addr, metricsAddr := s4.servingAddr(t)
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		return &stage4Process{stage3: s3, stage4: s4, addr: addr, metricsAddr: metricsAddr, auditLog: auditLog,
			client: stage4v1.NewStage4ServiceClient(conn), conn: conn}
	}
	return serveOn(proxied.String()), proxy, dbURL, serveOn
}

// requireDatabaseLogSound stops gw, restarts serve on the database
// directly, and checks the log: every acknowledged execution is listed
// whole, every execution is closed, Stage-3 was not called more often
// than the log holds an EXECUTION_STARTED, and "stage4 audit verify"
// finds it intact.
func requireDatabaseLogSound(ctx context.Context, t *testing.T, gw *stage4Process, dbURL string, serveOn func(string) *stage4Process, acked []string) {
	t.Helper()
	require.NoError(t, gw.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, gw.stage4.exitCode(t))
	calls := stage3Started(gw.stage3)
	restarted := serveOn(dbURL)
	for _, id := range acked {
		requireCompleted(ctx, t, restarted.client, id)
	}
	require.NoError(t, restarted.stage4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, restarted.stage4.exitCode(t))

	types, _ := dbEvents(t, dbURL)
	started := 0
	for id, ts := range types {
		require.Contains(t, []string{"AUDIT_EVENT_TYPE_EXECUTION_COMPLETED", "AUDIT_EVENT_TYPE_EXECUTION_FAILED"}, ts[len(ts)-1],
			"execution %s is still open: %v", id, ts)
		if len(ts) > 1 && ts[1] == "AUDIT_EVENT_TYPE_EXECUTION_STARTED" {
			started++
		}
	}
	t.Logf("%d Stage-3 calls, %d executions started in the log, %d in all", calls, started, len(types))
	require.LessOrEqual(t, calls, started, "a Stage-3 call without a durable EXECUTION_STARTED")
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", dbURL)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
}

// requirePartitionAnswer checks an answer to a call made while the
// database was partitioned: nothing executed, or an outcome the caller
// must check; never a plain failure or a hang.
func requirePartitionAnswer(t *testing.T, err error, took time.Duration, okAllowed bool) {
	t.Helper()
	code, reason := status.Code(err), rpcerr.Reason(err)
	t.Logf("call during the partition: %v %s after %v", code, reason, took.Round(time.Millisecond))
	require.True(t, okAllowed && code == codes.OK || code == codes.Unavailable && reason == rpcerr.AuditUnavailable ||
		code == codes.Unknown && reason == rpcerr.OutcomeUnknown, "%v (%s)", err, reason)
}

// TestServeDatabasePartition partitions serve from its PostgreSQL audit
// store (a proxy holds every byte, connections stay open) while it is
// idle: calls sent during the partition are answered within answerBound,
// AUDIT_UNAVAILABLE (or OUTCOME_UNKNOWN), health turns NOT_SERVING; after
// the partition heals, health is SERVING again and plans execute, without
// a restart. Stage-3 was never called for an execution whose
// EXECUTION_STARTED the database does not hold, no acknowledged
// execution is lost, and after a restart the log verifies.
func TestServeDatabasePartition(t *testing.T) {
	t.Parallel()
	gw, proxy, dbURL, serveOn := partitionedGateway(t)
	ctx := testContext(t)
	var acked []string
	id, err := executeCall(ctx, t, gw.client)
	require.NoError(t, err)
	acked = append(acked, id)
	watch, stopWatch := watchHealth(ctx, t, gw)

	proxy.Partition()
	const during = 4
	var wg sync.WaitGroup
	errs := make([]error, during)
	took := make([]time.Duration, during)
	for i := range during {
		wg.Go(func() {
			begin := time.Now()
			_, errs[i] = boundedCall(t, gw.client)
			took[i] = time.Since(begin)
		})
	}
	wg.Wait()
	for i, err := range errs {
		requirePartitionAnswer(t, err, took[i], false)
	}
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_NOT_SERVING, answerBound)
	require.Equal(t, 1, stage3Started(gw.stage3), "nothing reached Stage-3 during the partition")

	proxy.Heal()
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_SERVING, answerBound)
	stopWatch()
	id, err = executeCall(ctx, t, gw.client)
	require.NoError(t, err, "no restart needed once the database answers again")
	acked = append(acked, id)
	requireDatabaseLogSound(ctx, t, gw, dbURL, serveOn, acked)
}

// TestServeDatabasePartitionUnderLoad partitions serve from its
// PostgreSQL audit store under the load of 8 callers, while executions
// are in Stage-3 and transactions in flight: every call is answered
// within answerBound, OK (finished before the partition took hold),
// AUDIT_UNAVAILABLE or OUTCOME_UNKNOWN, and health turns NOT_SERVING;
// after the partition heals, health is SERVING again and plans execute.
// Stage-3 was never called more often than the database holds an
// EXECUTION_STARTED, no acknowledged execution is lost, and after a
// restart every execution is closed and the log verifies.
func TestServeDatabasePartitionUnderLoad(t *testing.T) {
	t.Parallel()
	// Stage-3 takes a while, so that the partition finds executions in
	// it, whose terminal events are still to be written.
	gw, proxy, dbURL, serveOn := partitionedGateway(t, "--delay", "20ms")
	ctx := testContext(t)
	watch, stopWatch := watchHealth(ctx, t, gw)

	type answer struct {
		err  error
		took time.Duration
	}
	var mu sync.Mutex
	var acked []string
	var answers []answer
	loaded := make(chan struct{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				begin := time.Now()
				id, err := boundedCall(t, gw.client)
				mu.Lock()
				if err == nil {
					acked = append(acked, id)
					if len(acked) == 50 {
						close(loaded)
					}
				}
				answers = append(answers, answer{err, time.Since(begin)})
				mu.Unlock()
				if errors.Is(err, errUnanswered) {
					return
				}
			}
		})
	}
	select {
	case <-loaded:
	case <-ctx.Done():
		t.Fatal("the calls did not finish")
	}
	proxy.Partition()
	mu.Lock()
	before := len(answers)
	mu.Unlock()
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_NOT_SERVING, answerBound)
	close(stop) // the calls in flight are still answered within answerBound
	wg.Wait()
	for _, a := range answers[before:] {
		requirePartitionAnswer(t, a.err, a.took, true)
	}

	proxy.Heal()
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_SERVING, answerBound)
	stopWatch()
	id, err := executeCall(ctx, t, gw.client)
	require.NoError(t, err, "no restart needed once the database answers again")
	acked = append(acked, id)
	requireDatabaseLogSound(ctx, t, gw, dbURL, serveOn, acked)
}
