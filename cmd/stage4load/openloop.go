package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// openSample is the outcome of an open-loop run at a fixed rate.
type openSample struct {
	Rate     float64 `json:"rate"`
	Sent     int     `json:"sent"`
	Errors   int     `json:"errors"`
	Dropped  int     `json:"dropped"` // not sent: maxInFlight calls were already outstanding
	Achieved float64 `json:"achieved_rps"`
	// Latencies count from each call's scheduled send time.
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms"`
	// LagP50 and LagP99 are how late the load generator itself sent calls
	// after their scheduled time; the latencies above include it.
	LagP50 float64 `json:"send_lag_p50_ms"`
	LagP99 float64 `json:"send_lag_p99_ms"`
}

// maxInFlight caps outstanding open-loop calls, so that an overloaded server
// sheds load (counted as dropped) instead of growing goroutines unboundedly.
const maxInFlight = 1024

// pacer is the open loop's clock: now reads it, sleep waits (roughly) d.
type pacer struct {
	now   func() time.Time
	sleep func(d time.Duration)
}

// realPacer sleeps with nanosleep(2) in the sending goroutine's thread: Go's
// timers wake an otherwise idle process only about every millisecond here,
// which would send calls in bursts and charge each a share of that
// millisecond; nanosleep overshoots by tens of microseconds.
var realPacer = pacer{now: time.Now, sleep: func(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	_ = syscall.Nanosleep(&ts, nil) // an early wake-up just loops again
}}

// openLoop sends calls at a fixed rate for d, whether or not earlier calls
// have returned. Latency is measured from each call's scheduled send time,
// not from when it was actually sent: a server (or a load generator) that
// stalls is charged the stall on every call it delayed, so slow periods are
// not under-represented (no coordinated omission).
func openLoop(ctx context.Context, call callFunc, rate float64, d time.Duration) (openSample, error) {
	return openLoopWith(ctx, realPacer, call, rate, d)
}

func openLoopWith(ctx context.Context, clock pacer, call callFunc, rate float64, d time.Duration) (openSample, error) {
	if rate <= 0 {
		return openSample{}, fmt.Errorf("rate %v: must be positive", rate)
	}
	interval := time.Duration(float64(time.Second) / rate)
	var (
		mu       sync.Mutex
		lats     []time.Duration
		lags     []time.Duration
		errs     errCount
		inFlight atomic.Int64
		wg       sync.WaitGroup
		dropped  int
	)
	start := clock.now()
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval) // scheduled, never moved
		if at.Sub(start) >= d || ctx.Err() != nil {
			break
		}
		for {
			wait := at.Sub(clock.now())
			if wait <= 0 {
				break
			}
			clock.sleep(wait)
		}
		if inFlight.Load() >= maxInFlight {
			dropped++
			continue
		}
		inFlight.Add(1)
		wg.Go(func() {
			defer inFlight.Add(-1)
			sent := clock.now()
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			defer cancel()
			if err := call(cctx); err != nil {
				errs.add(err)
				return
			}
			lat := clock.now().Sub(at)
			mu.Lock()
			lats = append(lats, lat)
			lags = append(lags, sent.Sub(at))
			mu.Unlock()
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return openSample{}, err
	}
	// The schedule spans d; the last sends go out just before its end.
	s := summarize(lats, max(clock.now().Sub(start), d))
	lag := summarize(lags, d)
	return openSample{
		Rate: rate, Sent: s.Requests + errs.n, Errors: errs.n, Dropped: dropped,
		Achieved: s.RPS, P50: s.P50, P90: s.P90, P99: s.P99, P999: s.P999, Max: s.Max,
		LagP50: lag.P50, LagP99: lag.P99,
	}, nil
}

// openRun is one open-loop run of a configuration in one round.
type openRun struct {
	Round  int    `json:"round"`
	Config string `json:"config"`
	// Fraction is the rate as a fraction of (c)'s closed-loop throughput;
	// 0 for a rate given in requests/s (--open-rate).
	Fraction float64 `json:"fraction,omitempty"`
	openSample
}

// openRow summarizes one configuration at one rate across rounds.
type openRow struct {
	Config   string  `json:"config"`
	Fraction float64 `json:"fraction,omitempty"`
	Rate     float64 `json:"rate"`
	Achieved stat    `json:"achieved_rps"`
	P50      stat    `json:"p50_ms"`
	P99      stat    `json:"p99_ms"`
	P999     stat    `json:"p999_ms"`
	Max      stat    `json:"max_ms"`
	LagP99   stat    `json:"send_lag_p99_ms"`
	Dropped  int     `json:"dropped"`
}

// openRate is one rate of the open-loop runs.
type openRate struct {
	fraction float64
	rate     float64
}

// runOpenLoops runs (b) and (c) open loop at every rate cfg asks for, in
// cfg.rounds interleaved rounds, and summarizes them into res. The rates
// that are fractions scale (c)'s closed-loop throughput, so res must be
// summarized already.
func runOpenLoops(ctx context.Context, res *results, cfg config, callers map[string]callFunc, progress io.Writer) error {
	var rates []openRate
	if len(cfg.openFractions) > 0 {
		base := 0.0
		for _, row := range res.Summary {
			if row.Config == cfgStage4 && row.Concurrency == cfg.openBaseConc {
				base = row.RPS.Median
			}
		}
		if base <= 0 {
			return fmt.Errorf("open loop: no closed-loop throughput of %s at %d callers", cfgStage4, cfg.openBaseConc)
		}
		res.OpenBase = base
		for _, f := range cfg.openFractions {
			rates = append(rates, openRate{fraction: f, rate: f * base})
		}
	}
	if cfg.openRate > 0 {
		rates = append(rates, openRate{rate: cfg.openRate})
	}
	for r := 1; r <= cfg.rounds && len(rates) > 0; r++ {
		for _, rt := range rates {
			for _, c := range []string{cfgProxy, cfgStage4} {
				if cfg.openWarmup > 0 {
					if _, err := openLoop(ctx, callers[c], rt.rate, cfg.openWarmup); err != nil {
						return fmt.Errorf("open loop, %s: %w", c, err)
					}
				}
				s, err := openLoop(ctx, callers[c], rt.rate, cfg.openDuration)
				if err != nil {
					return fmt.Errorf("open loop, %s: %w", c, err)
				}
				fmt.Fprintf(progress, "round %d/%d open loop %-8s %6.0f req/s offered: %6.0f achieved  p50 %7.3f  p99 %7.3f  p99.9 %7.3f ms  send lag p99 %6.3f ms  dropped %d\n",
					r, cfg.rounds, c, s.Rate, s.Achieved, s.P50, s.P99, s.P999, s.LagP99, s.Dropped)
				if s.Errors > 0 {
					return fmt.Errorf("open loop, %s: %d requests failed", c, s.Errors)
				}
				res.OpenLoop = append(res.OpenLoop, openRun{Round: r, Config: c, Fraction: rt.fraction, openSample: s})
			}
		}
	}
	for _, rt := range rates {
		for _, c := range []string{cfgProxy, cfgStage4} {
			var runs []openRun
			for _, o := range res.OpenLoop {
				if o.Config == c && o.Rate == rt.rate {
					runs = append(runs, o)
				}
			}
			row := openRow{
				Config: c, Fraction: rt.fraction, Rate: rt.rate,
				Achieved: statOf(runs, func(o openRun) float64 { return o.Achieved }),
				P50:      statOf(runs, func(o openRun) float64 { return o.P50 }),
				P99:      statOf(runs, func(o openRun) float64 { return o.P99 }),
				P999:     statOf(runs, func(o openRun) float64 { return o.P999 }),
				Max:      statOf(runs, func(o openRun) float64 { return o.Max }),
				LagP99:   statOf(runs, func(o openRun) float64 { return o.LagP99 }),
			}
			for _, o := range runs {
				row.Dropped += o.Dropped
			}
			res.OpenSummary = append(res.OpenSummary, row)
		}
	}
	return nil
}
