package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
)

// executePlans executes n plans through gw, each to completion.
func executePlans(ctx context.Context, t *testing.T, gw *stage4Process, n int) {
	t.Helper()
	for range n {
		_, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.NoError(t, err)
	}
}

// TestServeListingScansABoundedNumberOfRecords: with
// --audit-read-max-scanned, a listing whose matches are spread over the log
// ends its page early with a next_page_token rather than reading the whole
// log in one call; following the tokens still returns every match once.
func TestServeListingScansABoundedNumberOfRecords(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, nil, []string{"--audit-readers", "*", "--audit-read-max-scanned", "10"})
	ctx := testContext(t)
	const plans = 30
	executePlans(ctx, t, gw, plans)

	req := &stage4v1.ListAuditEventsRequest{PageSize: 1000, Type: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED}
	first, err := gw.client.ListAuditEvents(ctx, req)
	require.NoError(t, err)
	require.Less(t, len(first.GetAuditEvents()), plans, "the first page read past its budget")
	require.NotEmpty(t, first.GetNextPageToken())

	seen := map[uint64]bool{}
	pages := 0
	for {
		res, err := gw.client.ListAuditEvents(ctx, req)
		require.NoError(t, err)
		pages++
		for _, e := range res.GetAuditEvents() {
			require.Equal(t, stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED, e.GetType())
			require.False(t, seen[e.GetSequence()], "sequence %d listed twice", e.GetSequence())
			seen[e.GetSequence()] = true
		}
		if res.GetNextPageToken() == "" {
			break
		}
		req.PageToken = res.GetNextPageToken()
	}
	require.Len(t, seen, plans)
	require.Greater(t, pages, 1)
}

// TestServeHeavyReadersAreHeldToTheirShare: audit readers together may take
// --audit-read-share of the time. Past it, a read whose deadline would pass
// before its turn comes is refused at once with RESOURCE_EXHAUSTED
// (AUDIT_READS_BUSY), counted, while executions go on; before the limit,
// readers could take every core and ExecutePlan fell from 3,709 to 38
// calls/s (the throughput itself is measured by make bench).
func TestServeHeavyReadersAreHeldToTheirShare(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, nil, []string{"--audit-readers", "*",
		// A millisecond of reading each second.
		"--audit-read-share", "0.001", "--max-concurrent-audit-reads", "1"})
	ctx := testContext(t)
	executePlans(ctx, t, gw, 30)

	var refused error
	for i := 0; i < 500 && refused == nil; i++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := gw.client.ListAuditEvents(rctx, &stage4v1.ListAuditEventsRequest{PageSize: 1000})
		cancel()
		if err != nil {
			refused = err
		}
	}
	require.Error(t, refused, "500 reads of the whole log were all let through")
	require.Equal(t, codes.ResourceExhausted, status.Code(refused), "%v", refused)
	require.Equal(t, rpcerr.AuditReadsBusy, rpcerr.Reason(refused))

	executePlans(ctx, t, gw, 1)
	require.Contains(t, scrape(t, gw.metricsAddr), "stage4_audit_reads_refused_total 1")
}
