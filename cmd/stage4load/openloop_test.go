package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeClock is a pacer whose time moves only when the sender sleeps: by
// the time asked for, plus stall on the first sleep.
type fakeClock struct {
	mu      sync.Mutex
	t       time.Time
	stall   time.Duration
	stalled bool
}

func (c *fakeClock) pacer() pacer {
	return pacer{
		now: func() time.Time {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.t
		},
		sleep: func(d time.Duration) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.t = c.t.Add(d)
			if !c.stalled {
				c.t = c.t.Add(c.stall)
				c.stalled = true
			}
		},
	}
}

// TestOpenLoopCountsFromTheSchedule stalls the sender for 50 ms at the
// start of a 100 ms run at 1000 calls/s, with calls that take no time at
// all. Measured from the actual send, every latency would be zero; from the
// schedule, the calls the stall delayed carry it: the first of them 50 ms,
// the next 49 ms, and so on.
func TestOpenLoopCountsFromTheSchedule(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1000, 0), stall: 50 * time.Millisecond}
	s, err := openLoopWith(t.Context(), clock.pacer(), func(context.Context) error { return nil }, 1000, 100*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, 100, s.Sent)
	require.Zero(t, s.Errors)
	require.Zero(t, s.Dropped)
	require.GreaterOrEqual(t, s.Max, 50.0)
	require.GreaterOrEqual(t, s.P90, 40.0, "the delayed tenth and more")
	require.GreaterOrEqual(t, s.LagP99, 49.0, "the sender's own lateness is reported")
}

// TestOpenLoopKeepsItsRate sends on an exact clock: every scheduled call
// is sent, and the achieved rate is the offered one.
func TestOpenLoopKeepsItsRate(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1000, 0)}
	s, err := openLoopWith(t.Context(), clock.pacer(), func(context.Context) error { return nil }, 500, time.Second)
	require.NoError(t, err)
	require.Equal(t, 500, s.Sent)
	require.InDelta(t, 500, s.Achieved, 1)
}
