package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

// answerBound is how long a call may take to be answered while the
// audit store hangs or is cut off: Stage-4 promises bounded answers,
// never a hang.
const answerBound = 15 * time.Second

// executeCall is ExecutePlan of a testkit plan, returning the execution
// id that the response header carries (also when the call fails after
// the header was sent), or "".
func executeCall(ctx context.Context, t *testing.T, client stage4v1.Stage4ServiceClient) (string, error) {
	var header metadata.MD
	_, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)}, grpc.Header(&header))
	var id string
	if ids := header.Get(testkit.ExecutionIDHeader); len(ids) == 1 {
		id = ids[0]
	}
	return id, err
}

// errUnanswered is boundedCall's error for a call not answered in time.
var errUnanswered = errors.New("not answered in time")

// boundedCall is executeCall with no deadline of its own (as a careless
// client sends it) that must be answered within answerBound; the test
// fails if it is not (and the call is cancelled). It may run on any
// goroutine.
func boundedCall(t *testing.T, client stage4v1.Stage4ServiceClient) (string, error) {
	t.Helper()
	type result struct {
		id  string
		err error
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan result, 1)
	go func() {
		id, err := executeCall(ctx, t, client)
		done <- result{id, err}
	}()
	timer := time.NewTimer(answerBound)
	defer timer.Stop()
	select {
	case r := <-done:
		return r.id, r.err
	case <-timer.C:
		t.Errorf("ExecutePlan without a deadline was not answered within %v", answerBound)
		return "", errUnanswered
	}
}

// waitHealthWithin receives from watch until the status is want; the test
// fails if that takes longer than bound.
func waitHealthWithin(t *testing.T, watch healthpb.Health_WatchClient, want healthpb.HealthCheckResponse_ServingStatus, bound time.Duration) {
	t.Helper()
	got := make(chan error, 1)
	go func() {
		for {
			res, err := watch.Recv()
			if err != nil {
				got <- err
				return
			}
			if res.GetStatus() == want {
				got <- nil
				return
			}
		}
	}()
	timer := time.NewTimer(bound)
	defer timer.Stop()
	select {
	case err := <-got:
		require.NoError(t, err, "health watch ended before %v", want)
	case <-timer.C:
		t.Fatalf("health did not turn %v within %v", want, bound)
	}
}

// stage3Started counts the ExecuteMultiDomainPlan calls that a reference
// Stage-3 received, from its "started call" log lines.
func stage3Started(p *proc) int {
	n := 0
	for line := range strings.SplitSeq(p.stderr.String(), "\n") {
		if strings.Contains(line, `"msg":"started call"`) && strings.Contains(line, "ExecuteMultiDomainPlan") {
			n++
		}
	}
	return n
}

// logEvents reads the local audit log at dir behind the server's back:
// every execution's events in log order.
func logEvents(t *testing.T, dir string) map[string][]*stage4v1.AuditEvent {
	t.Helper()
	events := map[string][]*stage4v1.AuditEvent{}
	for _, line := range testkit.LogLines(t, dir) {
		ev := &stage4v1.AuditEvent{}
		require.NoError(t, protojson.Unmarshal(line, ev))
		events[ev.GetExecutionId()] = append(events[ev.GetExecutionId()], ev)
	}
	return events
}

// eventTypes is the types of events, in order.
func eventTypes(events []*stage4v1.AuditEvent) []stage4v1.AuditEventType {
	types := make([]stage4v1.AuditEventType, len(events))
	for i, ev := range events {
		types[i] = ev.GetType()
	}
	return types
}

// interrupted says whether an execution's events end with the
// EXECUTION_FAILED that a restart writes for an execution left open.
func interrupted(events []*stage4v1.AuditEvent) bool {
	last := events[len(events)-1]
	return last.GetType() == stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED &&
		last.GetDetails().GetFields()["phase"].GetStringValue() == audit.PhaseInterrupted
}

// requireAllClosed checks that every execution in events has its
// terminal event, and that none was forwarded without EXECUTION_STARTED:
// each has PLAN_RECEIVED first and at most one terminal event, last.
func requireAllClosed(t *testing.T, events map[string][]*stage4v1.AuditEvent) {
	t.Helper()
	for id, evs := range events {
		types := eventTypes(evs)
		require.Equal(t, stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED, types[0], "execution %s: %v", id, types)
		last := types[len(types)-1]
		require.Contains(t, []stage4v1.AuditEventType{
			stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED,
			stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED,
		}, last, "execution %s is still open: %v", id, types)
		if last == stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED {
			require.Equal(t, []stage4v1.AuditEventType{
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED,
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED,
			}, types, "execution %s", id)
		}
		require.LessOrEqual(t, len(types), 3, "execution %s: %v", id, types)
	}
}

// startedCount is the number of executions in events with an
// EXECUTION_STARTED: an upper bound of the Stage-3 calls that may have
// happened.
func startedCount(events map[string][]*stage4v1.AuditEvent) int {
	n := 0
	for _, evs := range events {
		for _, ev := range evs {
			if ev.GetType() == stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED {
				n++
				break
			}
		}
	}
	return n
}

// logBytes is the size of the records of the local audit log at dir, as
// a reader sees them.
func logBytes(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	for _, line := range testkit.LogLines(t, dir) {
		n += len(line) + 1
	}
	return n
}
