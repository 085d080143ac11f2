package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/perf/benchfmt"
)

// results is everything one run measured; it is written verbatim as JSON.
type results struct {
	Meta     meta          `json:"meta"`
	Plan     string        `json:"plan"`
	Rounds   []roundResult `json:"closed_loop_rounds"`
	Summary  []summaryRow  `json:"closed_loop_summary"`
	Ratios   []ratioRow    `json:"ratios"`
	Targets  []targetCheck `json:"targets"`
	Scaling  []scaleResult `json:"scaling"`
	OpenLoop []openRun     `json:"open_loop,omitempty"`
	// OpenBase is (c)'s closed-loop req/s that the open-loop fractions
	// scale; OpenSummary summarizes OpenLoop across rounds.
	OpenBase    float64       `json:"open_loop_base_rps,omitempty"`
	OpenSummary []openRow     `json:"open_loop_summary,omitempty"`
	Profiles    []profiledRun `json:"profiled_runs,omitempty"`
	Memory      memory        `json:"memory"`
	// Stage4Fsync1 is the mean duration of stage4's own audit fsyncs (from
	// its stage4_audit_commit_duration_seconds metric) during the one-caller
	// rounds of (c), in ms, across rounds.
	Stage4Fsync1 *stat  `json:"stage4_fsync_one_caller_ms,omitempty"`
	GoBench      string `json:"go_bench_file,omitempty"`
	// PG describes the PostgreSQL server of (d) and (e); PGRatios compare
	// them with (c). Both are empty when PostgreSQL was left out.
	PG       *pgInfo      `json:"postgres,omitempty"`
	PGRatios []pgRatioRow `json:"postgres_ratios,omitempty"`
	// Readers is the audit readers measurement, when it ran.
	Readers *readersResult `json:"audit_readers,omitempty"`
	// RIDRatios compare the runs with a request_id on every call with
	// those without (--request-id).
	RIDRatios []ridRatioRow `json:"request_id_ratios,omitempty"`
}

// meta says where, when and how the run happened.
type meta struct {
	Date      string `json:"date"`
	GoVersion string `json:"go_version"`
	GOOS      string `json:"goos"`
	GOARCH    string `json:"goarch"`
	NumCPU    int    `json:"num_cpu"`
	Command   string `json:"command"`
	// FsyncP50 is the median time of a small append plus fsync in the
	// directory of stage4's audit log.
	FsyncP50 float64 `json:"fsync_p50_ms"`
	WorkDir  string  `json:"work_dir,omitempty"`
}

// roundResult is one configuration at one concurrency in one round.
type roundResult struct {
	Round       int    `json:"round"`
	Config      string `json:"config"`
	Concurrency int    `json:"concurrency"`
	sample
}

// stat is a value across rounds.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// newStat summarizes vals, which must not be empty.
func newStat(vals []float64) stat {
	v := slices.Sorted(slices.Values(vals))
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return stat{Median: med, Min: v[0], Max: v[n-1]}
}

// statOf summarizes f of each of xs, which must not be empty.
func statOf[T any](xs []T, f func(T) float64) stat {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	return newStat(v)
}

// summaryRow is one configuration at one concurrency across rounds.
type summaryRow struct {
	Config          string `json:"config"`
	Concurrency     int    `json:"concurrency"`
	Errors          int    `json:"errors"`
	RPS             stat   `json:"rps"`
	P50             stat   `json:"p50_ms"`
	P90             stat   `json:"p90_ms"`
	P99             stat   `json:"p99_ms"`
	GatewayCPUPer1k *stat  `json:"gateway_cpu_ms_per_1k_req,omitempty"` // nil for (a), which has no gateway
	Stage3CPUPer1k  stat   `json:"stage3_cpu_ms_per_1k_req"`
	LoadgenCPUPer1k stat   `json:"loadgen_cpu_ms_per_1k_req"`
	// PostgresCPUPer1k is the CPU of the database's sessions, for (d)
	// and (e) on a server on this machine.
	PostgresCPUPer1k *stat `json:"postgres_cpu_ms_per_1k_req,omitempty"`
}

// ratioRow compares (c) with (a) and (b) at one concurrency, pairing the
// configurations within each round, so that drift between rounds cancels.
type ratioRow struct {
	Concurrency   int  `json:"concurrency"`
	RPSCOverB     stat `json:"rps_c_over_b"`
	RPSCOverA     stat `json:"rps_c_over_a"`
	AddedP50OverA stat `json:"p50_added_by_c_over_a_ms"`
	AddedP50OverB stat `json:"p50_added_by_c_over_b_ms"`
}

// targetCheck is one of the performance targets the project set.
type targetCheck struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// scaleResult is ExecutePlan through (c) for one plan size.
type scaleResult struct {
	Steps       int `json:"steps"`
	Bindings    int `json:"bindings"`
	Concurrency int `json:"concurrency"`
	sample
}

// memory is stage4's resident memory over the run.
type memory struct {
	StartKiB int64       `json:"start_rss_kib"` // after start-up, before any load
	EndKiB   int64       `json:"end_rss_kib"`   // after every measurement
	Soak     *soakResult `json:"soak,omitempty"`
}

// soakResult is the RSS check: (c) under steady load for a while.
type soakResult struct {
	Duration    string `json:"duration"`
	Concurrency int    `json:"concurrency"`
	BeforeKiB   int64  `json:"before_rss_kib"`
	AfterKiB    int64  `json:"after_rss_kib"`
	sample
}

// The gateway's targets (issue 11).
const (
	targetRatio      = 0.85
	targetRatioConc  = 64
	targetAddedP50ms = 0.5
	// targetCPUGapUS is the most gateway CPU per ExecutePlan, in µs, that
	// (c) may use beyond (b) at targetRatioConc callers.
	targetCPUGapUS = 30
	// targetDurableRatio is the least throughput of durable appends, as a
	// fraction of appends without fsync, at 64 writers (BenchmarkAppend of
	// audit/segstore, the default file store).
	targetDurableRatio = 0.5
)

// summarize fills Summary, Ratios and Targets from Rounds. fsyncP50 is
// this machine's fsync in ms, for the latency target restated in its terms.
func (r *results) summarize(cfg config, fsyncP50 float64) {
	pick := func(c string, conc int) []roundResult {
		var out []roundResult
		for _, x := range r.Rounds {
			if x.Config == c && x.Concurrency == conc {
				out = append(out, x)
			}
		}
		return out
	}
	cpu := func(role string) func(roundResult) float64 {
		return func(x roundResult) float64 { return x.CPUPer1k[role] }
	}
	for _, conc := range cfg.concurrency {
		for _, c := range []string{cfgDirect, cfgProxy, cfgStage4, cfgStage4RID, cfgStage4PG, cfgStage4PGRID, cfgStage4PG2} {
			rs := pick(c, conc)
			if len(rs) == 0 {
				continue
			}
			row := summaryRow{
				Config: c, Concurrency: conc,
				RPS:             statOf(rs, func(x roundResult) float64 { return x.RPS }),
				P50:             statOf(rs, func(x roundResult) float64 { return x.P50 }),
				P90:             statOf(rs, func(x roundResult) float64 { return x.P90 }),
				P99:             statOf(rs, func(x roundResult) float64 { return x.P99 }),
				Stage3CPUPer1k:  statOf(rs, cpu(roleStage3)),
				LoadgenCPUPer1k: statOf(rs, cpu(roleLoadgen)),
			}
			for _, x := range rs {
				row.Errors += x.Errors
			}
			if c != cfgDirect {
				g := statOf(rs, cpu(roleGateway))
				row.GatewayCPUPer1k = &g
			}
			if _, ok := rs[0].CPU[rolePostgres]; ok {
				p := statOf(rs, cpu(rolePostgres))
				row.PostgresCPUPer1k = &p
			}
			r.Summary = append(r.Summary, row)
		}
		a, b, c := pick(cfgDirect, conc), pick(cfgProxy, conc), pick(cfgStage4, conc)
		if len(a) == 0 || len(a) != len(b) || len(b) != len(c) {
			continue
		}
		var cb, ca, da, db []float64
		for i := range c {
			cb = append(cb, c[i].RPS/b[i].RPS)
			ca = append(ca, c[i].RPS/a[i].RPS)
			da = append(da, c[i].P50-a[i].P50)
			db = append(db, c[i].P50-b[i].P50)
		}
		r.Ratios = append(r.Ratios, ratioRow{
			Concurrency: conc,
			RPSCOverB:   newStat(cb), RPSCOverA: newStat(ca),
			AddedP50OverA: newStat(da), AddedP50OverB: newStat(db),
		})
	}
	for _, x := range r.Ratios {
		switch x.Concurrency {
		case targetRatioConc:
			r.Targets = append(r.Targets, targetCheck{
				Target:   fmt.Sprintf("throughput of (c) >= %.2fx (b) at %d callers", targetRatio, targetRatioConc),
				Measured: fmt.Sprintf("%.3fx (median; min %.3f, max %.3f)", x.RPSCOverB.Median, x.RPSCOverB.Min, x.RPSCOverB.Max),
				Met:      x.RPSCOverB.Median >= targetRatio,
			})
			b, c := pick(cfgProxy, x.Concurrency), pick(cfgStage4, x.Concurrency)
			gaps := make([]float64, len(c))
			for i := range c {
				gaps[i] = c[i].CPUPer1k[roleGateway] - b[i].CPUPer1k[roleGateway]
			}
			g := newStat(gaps)
			r.Targets = append(r.Targets, targetCheck{
				Target:   fmt.Sprintf("gateway CPU per request of (c) <= (b)'s + %d µs at %d callers", targetCPUGapUS, targetRatioConc),
				Measured: fmt.Sprintf("+%.0f µs (median; min %+.0f, max %+.0f)", g.Median, g.Min, g.Max),
				Met:      g.Median <= targetCPUGapUS,
			})
		case 1:
			r.Targets = append(r.Targets, targetCheck{
				Target:   fmt.Sprintf("p50 of (c) <= p50 of (b) + %.2f ms at 1 caller", targetAddedP50ms),
				Measured: fmt.Sprintf("+%.3f ms (median; min %+.3f, max %+.3f)", x.AddedP50OverB.Median, x.AddedP50OverB.Min, x.AddedP50OverB.Max),
				Met:      x.AddedP50OverB.Median <= targetAddedP50ms,
			})
			// The same target with this disk's fsync instead of the
			// assumed 0.13 ms: what the design can reach here.
			local := 2*fsyncP50 + 0.1
			r.Targets = append(r.Targets, targetCheck{
				Target:   fmt.Sprintf("p50 of (c) <= p50 of (b) + 2 fsyncs measured here (2 x %.3f ms) + 0.1 ms = %.3f ms at 1 caller", fsyncP50, local),
				Measured: fmt.Sprintf("+%.3f ms (median)", x.AddedP50OverB.Median),
				Met:      x.AddedP50OverB.Median <= local,
			})
			if f := r.Stage4Fsync1; f != nil {
				// The same again with the fsyncs as stage4 itself timed them,
				// Go's blocking-syscall hand-off included.
				inServer := 2*f.Median + 0.1
				r.Targets = append(r.Targets, targetCheck{
					Target: fmt.Sprintf("p50 of (c) <= p50 of (b) + 2 fsyncs as stage4 timed them in these rounds (2 x %.3f ms) + 0.1 ms = %.3f ms at 1 caller",
						f.Median, inServer),
					Measured: fmt.Sprintf("+%.3f ms (median)", x.AddedP50OverB.Median),
					Met:      x.AddedP50OverB.Median <= inServer,
				})
			}
		}
	}
	r.summarizePG(cfg, pick)
	r.summarizeRequestIDs(cfg, pick)
}

// writeOutputs prints the tables and writes the report and the JSON.
func writeOutputs(r *results, cfg config, stdout io.Writer) error {
	var gobench []byte
	if cfg.gobench != "" {
		var err error
		if gobench, err = os.ReadFile(cfg.gobench); err != nil {
			return fmt.Errorf("read go benchmarks: %w", err)
		}
		r.GoBench = cfg.gobench
		if t, ok := durableTarget(gobench); ok {
			r.Targets = append(r.Targets, t)
		}
	}
	var md bytes.Buffer
	writeMarkdown(&md, r, cfg)
	if _, err := stdout.Write(md.Bytes()); err != nil {
		return err
	}
	if len(gobench) > 0 {
		fmt.Fprintf(&md, "\n## Go micro-benchmarks\n\nOutput of `go test -run '^$' -bench . -benchmem ./...` from the same run:\n\n```\n%s\n```\n",
			strings.TrimRight(string(gobench), "\n"))
	}
	if cfg.out != "" {
		if err := writeFile(cfg.out, md.Bytes()); err != nil {
			return err
		}
	}
	if cfg.jsonOut != "" {
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return fmt.Errorf("encode results: %w", err)
		}
		if err := writeFile(cfg.jsonOut, append(b, '\n')); err != nil {
			return err
		}
	}
	return nil
}

// durableTarget checks the durable-append target against the go benchmark
// output: the ns/op of audit/segstore's BenchmarkAppend at 64 writers,
// with and without fsync, paired in the order they ran (go test -count
// runs the pair again each time), so that a pair saw the same machine.
func durableTarget(gobench []byte) (targetCheck, bool) {
	var durable, volatile []float64
	br := benchfmt.NewReader(bytes.NewReader(gobench), "gobench")
	for br.Scan() {
		res, ok := br.Result().(*benchfmt.Result)
		if !ok || !strings.HasSuffix(res.GetConfig("pkg"), "/audit/segstore") {
			continue // a syntax error or unit line, or another package
		}
		secs, ok := res.Value("sec/op")
		if !ok {
			continue
		}
		// The name without the GOMAXPROCS that go test appends.
		name, _, _ := strings.Cut(string(res.Name), "-")
		switch name {
		case "Append/fsync=true/writers=64":
			durable = append(durable, secs*1e9)
		case "Append/fsync=false/writers=64":
			volatile = append(volatile, secs*1e9)
		}
	}
	n := min(len(durable), len(volatile))
	if n == 0 {
		return targetCheck{}, false
	}
	ratios := make([]float64, n)
	for i := range n {
		ratios[i] = volatile[i] / durable[i]
	}
	st := newStat(ratios)
	return targetCheck{
		Target: fmt.Sprintf("durable appends >= %.1fx the throughput of appends without fsync at 64 writers (audit/segstore BenchmarkAppend)", targetDurableRatio),
		Measured: fmt.Sprintf("%.2fx (median of %d pairs; min %.2f, max %.2f; %.0f against %.0f ns/op, medians)",
			st.Median, n, st.Min, st.Max, newStat(durable).Median, newStat(volatile).Median),
		Met: st.Median >= targetDurableRatio,
	}, true
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// configNames are the configurations as the report names them.
var configNames = map[string]string{
	cfgDirect: "(a) direct to Stage-3",
	cfgProxy:  "(b) bare proxy",
	cfgStage4: "(c) stage4 serve",
	// (c) is on the file store; (d) and (e) say what they are on.
	cfgStage4PG:  "(d) stage4 serve, PostgreSQL",
	cfgStage4PG2: "(e) 2 x stage4 serve, one PostgreSQL",
	// --request-id: (c) and (d) with a request_id on every call.
	cfgStage4RID:   "(c2) stage4 serve, request_id",
	cfgStage4PGRID: "(d2) stage4 serve, PostgreSQL, request_id",
}

// writeMarkdown renders the report. Values across rounds read
// "median (min–max)".
func writeMarkdown(w io.Writer, r *results, cfg config) {
	m := r.Meta
	fmt.Fprintf(w, "# Stage-4 performance\n\n")
	fmt.Fprintf(w, "Measured %s on %d CPUs (runtime.NumCPU), %s/%s, %s.\n\n", m.Date, m.NumCPU, m.GOOS, m.GOARCH, m.GoVersion)
	fmt.Fprintf(w, "Command:\n\n```\n%s\n```\n\n", m.Command)
	fmt.Fprintf(w, "One small append plus fsync in the audit log's directory takes %.3f ms here (median of %d).", m.FsyncP50, fsyncSamples)
	if f := r.Stage4Fsync1; f != nil {
		fmt.Fprintf(w, " Inside stage4, during the one-caller rounds of (c), an audit fsync took %.3f ms on average (median of rounds; min %.3f, max %.3f), as its stage4_audit_commit_duration_seconds metric timed it.", f.Median, f.Min, f.Max)
	}
	fmt.Fprint(w, "\n\n")
	fmt.Fprintf(w, "## Method\n\n")
	fmt.Fprintf(w, "- Every process runs on this machine and talks over 127.0.0.1: the reference Stage-3 "+
		"(`stage4 reference-stage3`), (b) the bare proxy (`stage4load proxy`, a plain grpc-go server whose "+
		"ExecutePlan converts the plan and forwards it with stage3client, nothing else), (c) `stage4 serve` with "+
		"validation, the fsynced audit log, info logging to a file and metrics on, and the load generator. "+
		"All of them share the %d CPUs, so at high concurrency the machine, not one process, is the limit.\n", m.NumCPU)
	fmt.Fprintf(w, "- Closed loop: N callers each send the next request when the previous one returns, over one "+
		"HTTP/2 connection per configuration. %d interleaved rounds; in each, at every concurrency, (a), (b) "+
		"and (c) run one after another: %v warm-up (not recorded), then %v measured.\n", cfg.rounds, cfg.warmup, cfg.measure)
	fmt.Fprintf(w, "- Latency is client-observed, sorted per round, nearest-rank percentiles. Any failed request fails "+
		"the run, so every table below has zero errors.\n")
	fmt.Fprintf(w, "- CPU is utime+stime from /proc/PID/stat (10 ms ticks) read just before and after each measured "+
		"phase; \"ms per 1000 requests\" equals µs per request. Gateway is the proxy's process for (b), stage4's for (c).\n")
	fmt.Fprintf(w, "- Plan: %s\n", r.Plan)
	fmt.Fprintf(w, "- The reference Stage-3 runs with --log-level warn (its own call log would only take CPU from what is "+
		"measured). It keeps only its last 10000 requests for inspection, so its memory stays bounded during the run.\n\n")

	fmt.Fprintf(w, "## Closed loop\n\n")
	fmt.Fprintf(w, "| configuration | callers | req/s | p50 ms | p90 ms | p99 ms | errors | gateway CPU ms/1000 req | Stage-3 CPU ms/1000 req |\n")
	fmt.Fprintf(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, s := range r.Summary {
		g := "–"
		if s.GatewayCPUPer1k != nil {
			g = fmtStat(*s.GatewayCPUPer1k, "%.0f")
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %d | %s | %s |\n", configNames[s.Config], s.Concurrency,
			fmtStat(s.RPS, "%.0f"), fmtStat(s.P50, "%.3f"), fmtStat(s.P90, "%.3f"), fmtStat(s.P99, "%.3f"),
			s.Errors, g, fmtStat(s.Stage3CPUPer1k, "%.0f"))
	}

	fmt.Fprintf(w, "\n## Stage-4 against the baselines\n\nRatios and differences are taken within each round, then summarized across rounds.\n\n")
	fmt.Fprintf(w, "| callers | throughput c/b | throughput c/a | p50 added by c over a, ms | p50 added by c over b, ms |\n")
	fmt.Fprintf(w, "|--:|--:|--:|--:|--:|\n")
	for _, x := range r.Ratios {
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s |\n", x.Concurrency, fmtStat(x.RPSCOverB, "%.3f"), fmtStat(x.RPSCOverA, "%.3f"),
			fmtStat(x.AddedP50OverA, "%+.3f"), fmtStat(x.AddedP50OverB, "%+.3f"))
	}

	writePGMarkdown(w, r, cfg)
	writeRequestIDMarkdown(w, r)

	if len(r.Targets) > 0 {
		fmt.Fprintf(w, "\n## Targets\n\n| target | measured | met |\n|---|---|---|\n")
		for _, t := range r.Targets {
			met := "no"
			if t.Met {
				met = "yes"
			}
			fmt.Fprintf(w, "| %s | %s | %s |\n", t.Target, t.Measured, met)
		}
	}

	if len(r.Scaling) > 0 {
		fmt.Fprintf(w, "\n## Plan size\n\nExecutePlan through (c) at %d callers, one run of %v per size after %v warm-up. "+
			"Step i > 0 reads step i-1's output through a data binding.\n\n", cfg.scaleConc, cfg.scaleMeasure, cfg.scaleWarmup)
		fmt.Fprintf(w, "| steps | bindings | req/s | p50 ms | p99 ms | stage4 CPU ms/1000 req | stage4 CPU µs per step | Stage-3 CPU ms/1000 req |\n")
		fmt.Fprintf(w, "|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, s := range r.Scaling {
			g := s.CPUPer1k[roleGateway]
			fmt.Fprintf(w, "| %d | %d | %.0f | %.3f | %.3f | %.0f | %.1f | %.0f |\n", s.Steps, s.Bindings, s.RPS, s.P50, s.P99,
				g, g/float64(s.Steps), s.CPUPer1k[roleStage3])
		}
		// Linear growth means a fixed cost per call plus a constant cost per
		// step; the slope between the smallest and largest plan is the latter.
		if n := len(r.Scaling); n >= 2 {
			lo, hi := r.Scaling[0], r.Scaling[n-1]
			if hi.Steps != lo.Steps {
				steps := float64(hi.Steps - lo.Steps)
				fmt.Fprintf(w, "\nFrom %d to %d steps, each added step costs stage4 %.1f µs of CPU and adds %.1f µs to p50 (Stage-3's work included).\n",
					lo.Steps, hi.Steps, (hi.CPUPer1k[roleGateway]-lo.CPUPer1k[roleGateway])/steps, (hi.P50-lo.P50)*1000/steps)
			}
		}
	}

	if len(r.OpenSummary) > 0 {
		fmt.Fprintf(w, "\n## Open loop\n\nRequests sent at fixed rates whatever the server's pace, for %v after %v at the same rate (not recorded), "+
			"(b) and (c) one after another at each rate, in %d interleaved rounds. Latency counts from each request's scheduled send time, not "+
			"from when it went out: a stall is charged to every request it delayed (no coordinated omission), the load generator's own lateness "+
			"included (send lag). Rates are fractions of (c)'s closed-loop throughput at %d callers (median of the rounds above, %.0f req/s). "+
			"Percentiles are nearest-rank within a run; values are the median of the rounds (min–max).\n\n",
			cfg.openDuration, cfg.openWarmup, cfg.rounds, cfg.openBaseConc, r.OpenBase)
		fmt.Fprintf(w, "| configuration | offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | max ms | send lag p99 ms | dropped |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, o := range r.OpenSummary {
			offered := fmt.Sprintf("%.0f", o.Rate)
			if o.Fraction > 0 {
				offered = fmt.Sprintf("%.0f (%.0f%%)", o.Rate, 100*o.Fraction)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", configNames[o.Config], offered,
				fmtStat(o.Achieved, "%.0f"), fmtStat(o.P50, "%.3f"), fmtStat(o.P99, "%.3f"), fmtStat(o.P999, "%.3f"),
				fmtStat(o.Max, "%.3f"), fmtStat(o.LagP99, "%.3f"), o.Dropped)
		}
	}

	writeReadersMarkdown(w, r.Readers)

	if len(r.Profiles) > 0 {
		fmt.Fprintf(w, "\n## CPU profiles\n\nAfter the rounds, each gateway ran %d callers for %v more while its own process took a CPU profile "+
			"(Go's runtime/pprof, served by `stage4 serve --pprof` and `stage4load proxy --pprof-listen`). The profiler costs a few per cent, "+
			"so these runs are not compared with the rounds.\n\n", cfg.profileConc, cfg.profileDuration)
		fmt.Fprintf(w, "| configuration | callers | req/s | gateway CPU µs/req (/proc) | in the profile | profile |\n|---|--:|--:|--:|--:|---|\n")
		for _, p := range r.Profiles {
			fmt.Fprintf(w, "| %s | %d | %.0f | %.0f | %.0f | %s |\n", configNames[p.Config], p.Concurrency, p.RPS,
				p.CPUPer1k[roleGateway], p.ProfiledCPU, p.Profile)
		}
		writeComponents(w, r.Profiles)
	}

	mem := r.Memory
	fmt.Fprintf(w, "\n## Memory\n\nstage4's resident set (VmRSS).\n\n| when | RSS MiB |\n|---|--:|\n")
	fmt.Fprintf(w, "| after start-up, before any load | %.1f |\n", mib(mem.StartKiB))
	if s := mem.Soak; s != nil {
		fmt.Fprintf(w, "| before the soak | %.1f |\n", mib(s.BeforeKiB))
		fmt.Fprintf(w, "| after the soak (%s at %d callers, %d requests, %.0f req/s) | %.1f |\n",
			s.Duration, s.Concurrency, s.Requests, s.RPS, mib(s.AfterKiB))
	}
	fmt.Fprintf(w, "| end of the run | %.1f |\n", mib(mem.EndKiB))
}

// writeComponents renders the profiles' CPU by component side by side.
func writeComponents(w io.Writer, runs []profiledRun) {
	fmt.Fprintf(w, "\nCPU per request by component, µs: each profile sample goes to the first component, in this order, "+
		"that a function on its stack belongs to (cmd/stage4load/pprofparse.go).\n\n| component |")
	for _, p := range runs {
		fmt.Fprintf(w, " %s |", configNames[p.Config])
	}
	fmt.Fprintf(w, "\n|---|%s\n", strings.Repeat("--:|", len(runs)))
	for i, name := range componentNames() {
		fmt.Fprintf(w, "| %s |", name)
		for _, p := range runs {
			if i < len(p.Components) {
				fmt.Fprintf(w, " %.1f |", p.Components[i])
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "| total |")
	for _, p := range runs {
		fmt.Fprintf(w, " %.1f |", p.ProfiledCPU)
	}
	fmt.Fprintln(w)
}

func fmtStat(s stat, f string) string {
	return fmt.Sprintf(f+" ("+f+"–"+f+")", s.Median, s.Min, s.Max)
}

func mib(kib int64) float64 { return float64(kib) / 1024 }
