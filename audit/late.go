package audit

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
)

// MaxLateEvents bounds the terminal events a log keeps in memory while
// its store cannot take them (see AppendLater). Past it, an execution is
// left to the sweep, which closes it as interrupted (without what Stage-3
// answered): the events are a few hundred bytes each, so the bound holds
// memory to a few MiB however long an outage lasts.
const MaxLateEvents = 10000

// lateEvents are the terminal events of executions whose end the store
// could not record (an outage), by execution id, for the log to write
// once the store is healthy again.
type lateEvents struct {
	mu     sync.Mutex
	events map[string]Event
}

// AppendLater keeps ev, the terminal event of an execution that the log
// could not record when the execution ended (its store was unavailable,
// or did not answer), and appends it as soon as the store is healthy
// again: before the log takes new executions, and only if the store lets
// this process claim the execution (Store.Claim), so that it gets exactly
// one terminal event whoever else closes it. Details say that it was
// recorded late. What Stage-3 answered and what the caller was told
// belong in ev's details; the interceptor puts them there. It never
// blocks; past MaxLateEvents the execution is left to the sweep.
func (l *Log) AppendLater(ev Event) {
	if !ev.Type.Terminal() || ev.ExecutionID == "" {
		return
	}
	d := maps.Clone(ev.Details)
	if d == nil {
		d = Details{}
	}
	d["recorded_late"] = true
	ev.Details = d
	lt := &l.late
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if lt.events == nil {
		lt.events = map[string]Event{}
	}
	if _, ok := lt.events[ev.ExecutionID]; !ok && len(lt.events) >= MaxLateEvents {
		l.metrics.lateDropped.WithLabelValues("full").Inc()
		if l.cfg.logger != nil {
			l.cfg.logger.Warn("too many terminal events waiting for the audit store; the execution is left to the sweep (closed as interrupted)",
				"execution_id", ev.ExecutionID, "waiting", len(lt.events))
		}
		return
	}
	lt.events[ev.ExecutionID] = ev
	l.metrics.late.Set(float64(len(lt.events)))
}

// hasLate reports whether events wait to be written.
func (l *Log) hasLate() bool {
	l.late.mu.Lock()
	defer l.late.mu.Unlock()
	return len(l.late.events) > 0
}

// lateEvent returns the event kept for execution id, if any.
func (l *Log) lateEvent(id string) (Event, bool) {
	l.late.mu.Lock()
	defer l.late.mu.Unlock()
	ev, ok := l.late.events[id]
	return ev, ok
}

// forgetLate drops the events of ids.
func (l *Log) forgetLate(ids ...string) {
	l.late.mu.Lock()
	defer l.late.mu.Unlock()
	for _, id := range ids {
		delete(l.late.events, id)
	}
	l.metrics.late.Set(float64(len(l.late.events)))
}

// writeLate appends the events kept by AppendLater for the executions the
// store lets this process claim, and forgets the others (closed by a
// replica's sweep meanwhile, or never stored). The supervisor runs it when
// a ping finds the store healthy again, before the log takes new
// executions; an error keeps the log unhealthy and the events kept.
func (l *Log) writeLate(ctx context.Context) error {
	l.late.mu.Lock()
	ids := slices.Collect(maps.Keys(l.late.events))
	l.late.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	claimed, err := l.store.Claim(ctx, ids)
	if err != nil {
		return fmt.Errorf("claim executions to record their late terminal events: %w", err)
	}
	mine := map[string]bool{}
	for _, e := range claimed {
		mine[e.ExecutionID] = true
	}
	var elsewhere []string
	for _, id := range ids {
		if !mine[id] {
			elsewhere = append(elsewhere, id)
		}
	}
	if len(elsewhere) > 0 {
		l.forgetLate(elsewhere...)
		l.metrics.lateDropped.WithLabelValues("closed_elsewhere").Add(float64(len(elsewhere)))
	}
	// Concurrently, so that they share group commits; in log order of
	// their executions otherwise (Claim's order).
	errs := make([]error, len(claimed))
	var wg sync.WaitGroup
	for i, e := range claimed {
		ev, ok := l.lateEvent(e.ExecutionID)
		if !ok {
			continue
		}
		wg.Go(func() {
			if _, err := l.Append(ctx, ev); err != nil {
				errs[i] = fmt.Errorf("late terminal event of %s: %w", e.ExecutionID, err)
				return
			}
			l.forgetLate(e.ExecutionID)
			l.metrics.lateWritten.Inc()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if len(claimed) > 0 && l.cfg.logger != nil {
		l.cfg.logger.Info("recorded the terminal events of executions whose end an audit store outage kept from the log",
			"executions", len(claimed), "closed_elsewhere", len(elsewhere))
	}
	return nil
}
