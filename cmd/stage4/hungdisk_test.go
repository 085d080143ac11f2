package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/faultfs"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
)

// TestServeHungDiskAnswersAgain: a call is with Stage-3 when the audit
// log's disk stops answering fsync. The call's terminal event cannot be
// made durable in time: the caller gets UNKNOWN/OUTCOME_UNKNOWN within the
// bound, health turns NOT_SERVING, new plans are refused before Stage-3.
// When the disk answers again (and its sync succeeds: what was written is
// durable), the same process serves again without a restart, and the
// execution has exactly one terminal event, whichever way it got there.
func TestServeHungDiskAnswersAgain(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	dir := filepath.Join(fsys.Dir(), "audit")
	gw := startGatewayOn(t, dir, nil, []string{"--delay", "500ms"}, []string{"--audit-readers", "*"})
	ctx := testContext(t)
	_, err := executeCall(ctx, t, gw.client)
	require.NoError(t, err)
	watch, stopWatch := watchHealth(ctx, t, gw)
	defer stopWatch()

	stream, id := testkit.StartExecutePlan(ctx, t, gw.conn, testkit.Plan(t))
	started := 0
	gw.stage3.stderr.waitFor(t, "Stage-3 received the plan", func(line string) bool {
		if strings.Contains(line, `"msg":"started call"`) && strings.Contains(line, "ExecuteMultiDomainPlan") {
			started++
		}
		return started == 2
	})
	fsys.HangSyncs()
	began := time.Now()
	err = stream.RecvMsg(&stage4v1.ExecutePlanResponse{})
	took := time.Since(began)
	require.Equal(t, codes.Unknown, status.Code(err), "%v", err)
	require.Equal(t, rpcerr.OutcomeUnknown, rpcerr.Reason(err))
	require.Less(t, took, answerBound, "answered within the bound")
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_NOT_SERVING, answerBound)
	calls := stage3Started(gw.stage3)
	_, err = boundedCall(t, gw.client)
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.Equal(t, rpcerr.AuditUnavailable, rpcerr.Reason(err))
	require.Equal(t, calls, stage3Started(gw.stage3), "nothing reaches Stage-3 while the disk hangs")

	fsys.ReleaseSyncs()
	fsys.Heal()
	waitHealthWithin(t, watch, healthpb.HealthCheckResponse_SERVING, answerBound)
	_, err = executeCall(ctx, t, gw.client)
	require.NoError(t, err, "the same process serves again: what it wrote was durable")
	res, err := gw.client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{ExecutionId: id})
	require.NoError(t, err)
	require.Equal(t, []stage4v1.AuditEventType{
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED,
	}, eventTypes(res.GetAuditEvents()), "exactly one terminal event: what Stage-3 answered")
	code, stdout, stderr := runStage4(t, nil, "audit", "verify", dir)
	require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
}
