package audit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
)

// TestClaimRequestThroughTheLog: the log stamps a claim's times (OpenUntil
// from WithOpenFor), and a terminal event's Request settles the key while
// the record keeps no trace of the answer.
func TestClaimRequestThroughTheLog(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	lg := newLog(t, memstore.Open(st, ""), audit.WithOpenFor(time.Minute))
	ctx := context.Background()
	k := audit.RequestKey{Caller: "user:alice", ID: "r1"}
	before := time.Now()
	held, claimed, err := lg.ClaimRequest(ctx, audit.Request{Key: k, PlanID: "plan", ExecutionID: "e"}, time.Time{})
	require.NoError(t, err)
	require.True(t, claimed)
	require.False(t, held.Claimed.Before(before))
	require.WithinDuration(t, held.Claimed.Add(time.Minute), held.OpenUntil, time.Millisecond)

	require.NoError(t, lg.AppendUnsynced(ctx, ev(audit.PlanReceived, "e")))
	_, err = lg.Append(ctx, ev(audit.ExecutionStarted, "e"))
	require.NoError(t, err)
	done := ev(audit.ExecutionCompleted, "e")
	done.Request = &audit.RequestOutcome{Answer: []byte("secret result")}
	_, err = lg.Append(ctx, done)
	require.NoError(t, err)

	held, claimed, err = lg.ClaimRequest(ctx, audit.Request{Key: k, PlanID: "plan", ExecutionID: "retry"}, time.Time{})
	require.NoError(t, err)
	require.False(t, claimed)
	require.Equal(t, audit.RequestDone, held.State)
	require.Equal(t, []byte("secret result"), held.Answer)
	for _, r := range st.Records() {
		require.NotContains(t, string(r.Line), "secret result", "answers never enter the log")
	}
	for _, e := range listAll(t, lg, audit.Filter{}, 10) {
		require.Nil(t, e.Request)
	}

	require.NoError(t, lg.Close())
	_, _, err = lg.ClaimRequest(ctx, audit.Request{Key: k, ExecutionID: "late"}, time.Time{})
	require.ErrorIs(t, err, audit.ErrClosed)
	require.ErrorIs(t, lg.ReleaseRequest(ctx, k, "late"), audit.ErrClosed)
	require.ErrorIs(t, lg.PurgeRequests(ctx, time.Now()), audit.ErrClosed)
}

// TestInterruptedExecutionSettlesItsKey: when a process stops with an
// execution open, the next one closes it as interrupted and settles its
// key with it: unknown after EXECUTION_STARTED (Stage-3 may have acted),
// forgotten when the execution never got that far.
func TestInterruptedExecutionSettlesItsKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		events    []audit.EventType
		wantState audit.RequestState // 0: forgotten
	}{
		{name: "after EXECUTION_STARTED", events: []audit.EventType{audit.PlanReceived, audit.ExecutionStarted}, wantState: audit.RequestUnknown},
		{name: "after PLAN_RECEIVED only", events: []audit.EventType{audit.PlanReceived}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := memstore.NewStorage()
			ctx := context.Background()
			first, err := audit.New(memstore.Open(st, "r1"))
			require.NoError(t, err)
			k := audit.RequestKey{Caller: "user:alice", ID: "r1"}
			_, claimed, err := first.ClaimRequest(ctx, audit.Request{Key: k, PlanID: "plan", ExecutionID: "e"}, time.Time{})
			require.NoError(t, err)
			require.True(t, claimed)
			for _, typ := range tt.events {
				_, err := first.Append(ctx, ev(typ, "e"))
				require.NoError(t, err)
			}
			st.Crash()
			_ = first.Close()

			restarted := newLog(t, memstore.Open(st, "r1"))
			require.Equal(t, []string{"e"}, restarted.Recovered())
			held, claimed, err := restarted.ClaimRequest(ctx, audit.Request{Key: k, PlanID: "plan", ExecutionID: "retry"}, time.Time{})
			require.NoError(t, err)
			if tt.wantState == 0 {
				require.True(t, claimed, "the key was released")
				return
			}
			require.False(t, claimed)
			require.Equal(t, tt.wantState, held.State)
			require.Equal(t, "e", held.ExecutionID)
		})
	}
}
