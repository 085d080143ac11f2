package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// callFunc makes one request and returns its error. It must be safe for
// concurrent use.
type callFunc func(ctx context.Context) error

// callTimeout bounds every request, so that a stuck server cannot hold a
// worker past the end of its round.
const callTimeout = 10 * time.Second

// watched is a process whose CPU time a measurement records, by role
// ("gateway", "stage3", "loadgen", "postgres"). The CPU of several
// processes of one role is summed.
type watched struct {
	role string
	pid  int
	// optional: the process may end during the measurement (a database
	// backend); its CPU then does not count, instead of failing the run.
	optional bool
}

// sample is the outcome of one measured closed-loop run.
type sample struct {
	Requests   int                `json:"requests"`
	Errors     int                `json:"errors"`
	FirstError string             `json:"first_error,omitempty"`
	Elapsed    float64            `json:"elapsed_s"`
	RPS        float64            `json:"rps"`
	P50        float64            `json:"p50_ms"`
	P90        float64            `json:"p90_ms"`
	P99        float64            `json:"p99_ms"`
	P999       float64            `json:"p999_ms"`
	Max        float64            `json:"max_ms"`
	CPU        map[string]float64 `json:"cpu_s"`             // CPU seconds used during the measurement, by role
	CPUPer1k   map[string]float64 `json:"cpu_ms_per_1k_req"` // the same per 1000 requests, in ms
}

// closedLoop runs conc workers that each call call back to back: first for
// warmup (not recorded), then, after all workers have stopped, for measure.
// The processes that watch lists after the warm-up (when a server's pool
// has made its connections) have their CPU time read just before and
// after the measured phase.
func closedLoop(ctx context.Context, call callFunc, conc int, warmup, measure time.Duration, watch func() []watched) (sample, error) {
	if warmup > 0 {
		if _, _, err := runWorkers(ctx, call, conc, warmup, false); err != nil {
			return sample{}, err
		}
	}
	procs := watch()
	before, err := cpuTimes(procs)
	if err != nil {
		return sample{}, err
	}
	start := time.Now()
	lats, errs, err := runWorkers(ctx, call, conc, measure, true)
	elapsed := time.Since(start)
	if err != nil {
		return sample{}, err
	}
	after, err := cpuTimes(procs)
	if err != nil {
		return sample{}, err
	}
	s := summarize(lats, elapsed)
	s.Errors = errs.n
	s.FirstError = errs.first
	s.CPU = make(map[string]float64, len(procs))
	s.CPUPer1k = make(map[string]float64, len(procs))
	for _, p := range procs {
		b, okb := before[p]
		a, oka := after[p]
		if okb && oka {
			s.CPU[p.role] += (a - b).Seconds()
		}
	}
	if s.Requests > 0 {
		for role, used := range s.CPU {
			s.CPUPer1k[role] = used * 1000 / float64(s.Requests) * 1000
		}
	}
	return s, nil
}

// errCount counts failed calls and keeps the first message.
type errCount struct {
	mu    sync.Mutex
	n     int
	first string
}

func (e *errCount) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == 0 {
		e.first = err.Error()
	}
	e.n++
}

// runWorkers is the closed loop: conc goroutines call back to back until d
// has passed. Each keeps its own latencies (no lock on the hot path); they
// are merged at the end. The loop ends by itself after d plus at most one
// callTimeout.
func runWorkers(ctx context.Context, call callFunc, conc int, d time.Duration, record bool) ([]time.Duration, *errCount, error) {
	if conc < 1 {
		return nil, nil, fmt.Errorf("concurrency %d: must be at least 1", conc)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, d+callTimeout)
	defer cancel()
	end := time.Now().Add(d)
	errs := &errCount{}
	per := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	for w := range conc {
		wg.Go(func() {
			var lats []time.Duration
			if record {
				lats = make([]time.Duration, 0, 4096)
			}
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				cctx, ccancel := context.WithTimeout(ctx, callTimeout)
				err := call(cctx)
				ccancel()
				if err != nil {
					errs.add(err)
					continue
				}
				if record {
					lats = append(lats, time.Since(t0))
				}
			}
			per[w] = lats
		})
	}
	wg.Wait()
	if err := parent.Err(); err != nil {
		return nil, nil, err
	}
	var n int
	for _, l := range per {
		n += len(l)
	}
	all := make([]time.Duration, 0, n)
	for _, l := range per {
		all = append(all, l...)
	}
	return all, errs, nil
}

// summarize sorts the latencies of successful calls and reports throughput
// and nearest-rank percentiles in milliseconds.
func summarize(lats []time.Duration, elapsed time.Duration) sample {
	slices.Sort(lats)
	s := sample{Requests: len(lats), Elapsed: elapsed.Seconds()}
	if len(lats) == 0 {
		return s
	}
	s.RPS = float64(len(lats)) / elapsed.Seconds()
	s.P50 = ms(percentile(lats, 0.50))
	s.P90 = ms(percentile(lats, 0.90))
	s.P99 = ms(percentile(lats, 0.99))
	s.P999 = ms(percentile(lats, 0.999))
	s.Max = ms(lats[len(lats)-1])
	return s
}

// percentile is the nearest-rank percentile of sorted, non-empty lats.
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuTimes reads the CPU time of each process; an optional one that is
// gone is left out.
func cpuTimes(procs []watched) (map[watched]time.Duration, error) {
	m := make(map[watched]time.Duration, len(procs))
	for _, p := range procs {
		t, err := cpuTime(p.pid)
		if err != nil {
			if p.optional {
				continue
			}
			return nil, fmt.Errorf("%s: %w", p.role, err)
		}
		m[p] = t
	}
	return m, nil
}
