package audit_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
)

// TestAdmitCountsRefusedExecutions: an execution refused by Admit while
// the store is unhealthy counts as a failed append, as
// stage4_audit_append_failures_total's help says, although its append was
// never attempted; Err answers the same without counting, and a healthy
// log admits without counting.
func TestAdmitCountsRefusedExecutions(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	reg := prometheus.NewRegistry()
	lg := newLog(t, memstore.Open(st, ""), audit.WithRegisterer(reg))
	failures := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == "stage4_audit_append_failures_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		t.Fatal("no stage4_audit_append_failures_total")
		return 0
	}
	require.NoError(t, lg.Admit())
	require.Zero(t, failures())

	st.Break(memstore.ErrBroken, true)
	_, err := lg.Append(context.Background(), ev(audit.PlanReceived, "e"))
	require.ErrorIs(t, err, audit.ErrUnavailable)
	require.Equal(t, 1.0, failures(), "the failed append")

	require.ErrorIs(t, lg.Err(), audit.ErrUnavailable)
	require.Equal(t, 1.0, failures(), "Err only looks")
	for range 3 {
		require.ErrorIs(t, lg.Admit(), audit.ErrUnavailable)
	}
	require.Equal(t, 4.0, failures(), "each refused execution counts")
}
