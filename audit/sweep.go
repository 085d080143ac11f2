package audit

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
)

// sweeper closes executions that a stopped process left open: the store
// hands them out (Store.Interrupted) and the sweeper appends
// EXECUTION_FAILED of phase "interrupted" for each. It runs at start (New)
// and then from the supervisor's loop (WithSweepInterval).
type sweeper struct {
	log    *Log
	logger *slog.Logger
}

// sweep closes what the store hands out now, bounded by the append
// timeout, and logs a failure, which the next sweep retries.
func (s *sweeper) sweep() {
	ctx, cancel := context.WithTimeout(context.Background(), s.log.cfg.appendTimeout)
	defer cancel()
	if _, err := s.log.CloseInterrupted(ctx); err != nil && s.logger != nil {
		s.logger.Warn("closing interrupted executions failed; will retry", "error", err)
	}
}

// CloseInterrupted appends EXECUTION_FAILED of phase "interrupted" for each
// execution that the store hands out as left open by a stopped process, in
// log order, and returns their ids. The log calls it at start and then
// periodically (WithSweepInterval); it is exported for tests and tools.
func (l *Log) CloseInterrupted(ctx context.Context) ([]string, error) {
	open, err := l.store.Interrupted(ctx)
	if err != nil {
		return nil, fmt.Errorf("find interrupted executions: %w", err)
	}
	slices.SortFunc(open, func(a, b OpenExecution) int { return cmp.Compare(a.Sequence, b.Sequence) })
	ids := make([]string, 0, len(open))
	for _, e := range open {
		ev := Event{
			Type:        ExecutionFailed,
			ExecutionID: e.ExecutionID,
			PlanID:      e.PlanID,
			UserID:      e.UserID,
			Details: Details{
				"phase":           PhaseInterrupted,
				"message":         "Stage-4 stopped before the execution's terminal event was recorded",
				"last_event_type": e.LastType.String(),
			},
			// The execution's request key, if it has one: an execution
			// that never reached EXECUTION_STARTED never called Stage-3,
			// so a retry may run; after it the outcome is unknown.
			Request: &RequestOutcome{Release: e.LastType == PlanReceived},
		}
		// An execution of this process whose end an outage kept from the
		// log (handed to it by its own store once its deadline passed) is
		// closed with what really happened.
		if late, ok := l.lateEvent(e.ExecutionID); ok {
			ev = late
		}
		if _, err := l.Append(ctx, ev); err != nil {
			return ids, fmt.Errorf("close interrupted execution %s: %w", e.ExecutionID, err)
		}
		l.forgetLate(e.ExecutionID)
		ids = append(ids, e.ExecutionID)
	}
	if len(ids) > 0 && l.cfg.logger != nil {
		l.cfg.logger.Warn("closed executions left open by a stopped Stage-4 process",
			"phase", PhaseInterrupted, "execution_ids", ids)
	}
	return ids, nil
}
