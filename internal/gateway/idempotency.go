package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/server"
)

// requestPurgeInterval is how often the request keys past the retention
// are purged from the audit store. Expired keys are forgotten at once
// whatever it is (a claim treats them as absent); the purge only frees
// their room.
const requestPurgeInterval = 10 * time.Minute

// requestPurgeTimeout bounds one purge.
const requestPurgeTimeout = time.Minute

// requestRetention is the retention of request keys that cfg asks for
// (--idempotency-retention), checked: longer than an execution may run,
// so that no key is forgotten while its execution may still be with
// Stage-3.
func requestRetention(cfg Config) (time.Duration, error) {
	d := cfg.IdempotencyRetention
	if d == 0 {
		d = audit.DefaultRequestRetention
	}
	if longest := cfg.Stage3.EffectiveMaxDeadline() + openForMargin; d <= longest {
		return 0, fmt.Errorf("%w: --idempotency-retention %v must be longer than an execution may run (--stage3-max-deadline plus %v: %v)",
			ErrConfig, d, openForMargin, longest)
	}
	return d, nil
}

// startRequestPurges purges the request keys claimed before the retention
// from the log's store, in the background, now and every
// requestPurgeInterval; stop ends that and waits for a purge under way.
// A failed purge is logged and tried again at the next interval.
func startRequestPurges(lg *audit.Log, retention time.Duration, logger *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(requestPurgeInterval)
		defer tick.Stop()
		for {
			pctx, pcancel := context.WithTimeout(ctx, requestPurgeTimeout)
			if err := lg.PurgeRequests(pctx, time.Now().Add(-retention)); err != nil && ctx.Err() == nil {
				logger.Warn("purging expired request ids failed; will retry", "error", err)
			}
			pcancel()
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
		}
	})
	return func() {
		cancel()
		wg.Wait()
	}
}

// keyOutcomeCounter counts what ExecutePlan calls with a request_id did
// with their keys, replays among them, in stage4_request_ids_total.
func keyOutcomeCounter(reg prometheus.Registerer) func(context.Context, server.KeyOutcome) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stage4_request_ids_total",
		Help: "ExecutePlan calls with a request_id, by what they did with their key: claimed (a first call, executed), " +
			"replayed (the first call's answer again), outcome_unknown, in_progress, reused (another plan), unavailable.",
	}, []string{"outcome"})
	for _, o := range []server.KeyOutcome{server.KeyClaimed, server.KeyReplayed, server.KeyOutcomeUnknown,
		server.KeyInProgress, server.KeyReused, server.KeyUnavailable} {
		c.WithLabelValues(string(o))
	}
	reg.MustRegister(c)
	return func(_ context.Context, o server.KeyOutcome) { c.WithLabelValues(string(o)).Inc() }
}
