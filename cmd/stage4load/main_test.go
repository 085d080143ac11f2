package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	httppprof "net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/server"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// startStage3 serves the reference Stage-3, knowing tokens, in-process.
func startStage3(t *testing.T, tokens map[string]string) *stage3ref.Server {
	t.Helper()
	ref, err := stage3ref.NewServer(stage3ref.NewService(stage3ref.WithTokens(tokens)))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, ref.Close()) })
	return ref
}

// serveProxyOn serves the pass-through proxy in-process on a loopback port
// and returns its address.
func serveProxyOn(t *testing.T, stage3Addr string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveProxy(ctx, lis, stage3Addr) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return lis.Addr().String()
}

// startProxy is a client of a new in-process proxy.
func startProxy(t *testing.T, stage3Addr string) stage4v1.Stage4ServiceClient {
	t.Helper()
	return stage4v1.NewStage4ServiceClient(dial(t, serveProxyOn(t, stage3Addr)))
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// TestMeasureAll runs the tool's core with tiny durations against in-process
// servers. This process stands in for every watched PID, and a second proxy
// stands in for stage4, whose wiring lives in cmd/stage4's main package.
func TestMeasureAll(t *testing.T) {
	ref := startStage3(t, stage3ref.DefaultTokens())

	pid := os.Getpid()
	e := env{
		direct:    stage3v1.NewStage3ServiceClient(dial(t, ref.Addr)),
		proxy:     startProxy(t, ref.Addr),
		stage4:    startProxy(t, ref.Addr),
		stage3PID: pid, proxyPID: pid, stage4PID: pid,
	}
	dir := t.TempDir()
	cfg := config{
		concurrency:   []int{1, 4},
		rounds:        2,
		warmup:        5 * time.Millisecond,
		measure:       30 * time.Millisecond,
		scaleSizes:    []int{1, 8},
		scaleConc:     2,
		scaleMeasure:  30 * time.Millisecond,
		soak:          30 * time.Millisecond,
		soakConc:      2,
		openRate:      200,
		openFractions: []float64{0.5},
		openBaseConc:  4,
		openDuration:  30 * time.Millisecond,
		out:           filepath.Join(dir, "docs", "PERFORMANCE.md"),
		jsonOut:       filepath.Join(dir, "docs", "performance.json"),
		gobench:       filepath.Join(dir, "gobench.txt"),
	}
	require.NoError(t, os.WriteFile(cfg.gobench, []byte("BenchmarkX-2 100 10 ns/op\n"), 0o644))

	var progress bytes.Buffer
	res, err := measureAll(t.Context(), e, cfg, 0.13, &progress)
	require.NoError(t, err)
	res.Meta = newMeta(cfg, dir)

	require.Len(t, res.Rounds, 2*2*3) // rounds x concurrencies x configurations
	for _, r := range res.Rounds {
		require.Positive(t, r.Requests, "%s at %d callers", r.Config, r.Concurrency)
		require.Zero(t, r.Errors)
		require.LessOrEqual(t, r.P50, r.P99)
	}
	require.Len(t, res.Summary, 2*3)
	require.Len(t, res.Ratios, 2)
	require.Len(t, res.Targets, 2) // only the 1-caller targets: 64 callers did not run
	require.Len(t, res.Scaling, 2)
	require.Len(t, res.OpenLoop, 2*2*2) // rounds x rates x (b) and (c)
	require.Len(t, res.OpenSummary, 2*2)
	require.Positive(t, res.OpenBase)
	require.InDelta(t, 0.5*res.OpenBase, res.OpenSummary[0].Rate, 1e-9)
	for _, o := range res.OpenSummary {
		require.LessOrEqual(t, o.P50.Median, o.P999.Median)
	}
	require.NotNil(t, res.Memory.Soak)
	require.Positive(t, res.Memory.Soak.AfterKiB)

	var stdout bytes.Buffer
	require.NoError(t, writeOutputs(res, cfg, &stdout))
	md, err := os.ReadFile(cfg.out)
	require.NoError(t, err)
	for _, want := range []string{"## Closed loop", "## Stage-4 against the baselines", "## Targets", "## Plan size", "## Open loop", "## Memory", "## Go micro-benchmarks", "BenchmarkX-2"} {
		require.Contains(t, string(md), want)
	}
	require.NotContains(t, stdout.String(), "BenchmarkX-2", "stdout has the tables only")
	var back results
	b, err := os.ReadFile(cfg.jsonOut)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, len(res.Rounds), len(back.Rounds))
	require.Equal(t, res.Rounds[0].Requests, back.Rounds[0].Requests)
}

// TestMeasureAllFailsOnErrors checks that a failing request fails the run
// instead of producing a fast-looking table.
func TestMeasureAllFailsOnErrors(t *testing.T) {
	ref := startStage3(t, map[string]string{"alice": "other-token"})
	pid := os.Getpid()
	e := env{
		direct:    stage3v1.NewStage3ServiceClient(dial(t, ref.Addr)),
		stage3PID: pid, proxyPID: pid, stage4PID: pid,
	}
	cfg := config{concurrency: []int{1}, rounds: 1, measure: 10 * time.Millisecond}
	_, err := measureAll(t.Context(), e, cfg, 0.13, &bytes.Buffer{})
	require.ErrorContains(t, err, "requests failed")
}

func TestPlansAreValid(t *testing.T) {
	t.Parallel()
	plans := []*stage4v1.Plan{benchPlan()}
	for _, n := range []int{1, 8, 64, 256} {
		p := scalePlan(n)
		require.Len(t, p.GetSteps(), n)
		plans = append(plans, p)
	}
	for _, p := range plans {
		require.NoError(t, server.Validate(&stage4v1.ExecutePlanRequest{Plan: p}), describePlan(p))
	}
}

func TestStats(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   []float64
		want stat
	}{
		{name: "odd", in: []float64{3, 1, 2}, want: stat{Median: 2, Min: 1, Max: 3}},
		{name: "even", in: []float64{4, 1, 2, 3}, want: stat{Median: 2.5, Min: 1, Max: 4}},
		{name: "one", in: []float64{7}, want: stat{Median: 7, Min: 7, Max: 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, newStat(tt.in))
		})
	}
	lats := make([]time.Duration, 100)
	for i := range lats {
		lats[i] = time.Duration(100-i) * time.Millisecond
	}
	s := summarize(lats, time.Second)
	require.InDelta(t, 50, s.P50, 1e-9)
	require.InDelta(t, 90, s.P90, 1e-9)
	require.InDelta(t, 99, s.P99, 1e-9)
	require.InDelta(t, 100, s.RPS, 1e-9)
}

func TestFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantPG  []int
		wantErr string
	}{
		{name: "defaults", args: nil, wantPG: []int{16, 64}},
		{name: "bad concurrency", args: []string{"--concurrency", "1,x"}, wantErr: "positive integers"},
		{name: "too many steps", args: []string{"--scale-steps", "257"}, wantErr: "1 to 256"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
		{name: "open fractions", args: []string{"--open-fractions", "0.5,0.8"}, wantPG: []int{16, 64}},
		{name: "bad open fraction", args: []string{"--open-fractions", "0.5,x"}, wantErr: "fractions"},
		{name: "open base not run", args: []string{"--open-fractions", "0.5", "--open-base-concurrency", "32"}, wantErr: "not in --concurrency"},
		{name: "PostgreSQL left out", args: []string{"--pg-concurrency", ""}, wantPG: nil},
		{name: "PostgreSQL not measured for the file", args: []string{"--concurrency", "1,16", "--pg-concurrency", "64"}, wantErr: "not in --concurrency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := parseConfig(tt.args, &bytes.Buffer{})
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, []int{1, 16, 64}, c.concurrency)
			require.Equal(t, tt.wantPG, c.pgConcurrency)
		})
	}
	err := runProxy(t.Context(), []string{"--listen", "0.0.0.0:0", "--stage3-addr", "127.0.0.1:1"})
	require.ErrorContains(t, err, "only 127.0.0.1")
	require.True(t, strings.HasPrefix(shellQuote([]string{"a", "b c"}), "a 'b c'"))
}

// TestProfileAll profiles two in-process gateways: this process stands in
// for both, its profile served as stage4 serve --pprof serves stage4's.
func TestProfileAll(t *testing.T) {
	ref := startStage3(t, stage3ref.DefaultTokens())
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
	pprofSrv := httptest.NewServer(mux)
	t.Cleanup(pprofSrv.Close)

	pid := os.Getpid()
	e := env{
		proxy: startProxy(t, ref.Addr), stage4: startProxy(t, ref.Addr),
		stage3PID: pid, proxyPID: pid, stage4PID: pid,
		proxyPprof: pprofSrv.URL + "/debug/pprof/profile", stage4Pprof: pprofSrv.URL + "/debug/pprof/profile",
	}
	cfg := config{profileDir: t.TempDir(), profileConc: 2, profileDuration: time.Second, warmup: 5 * time.Millisecond}
	callers := map[string]callFunc{cfgProxy: e.caller(cfgProxy, benchPlan()), cfgStage4: e.caller(cfgStage4, benchPlan())}
	runs, err := profileAll(t.Context(), e, cfg, callers, &bytes.Buffer{})
	require.NoError(t, err)
	require.Len(t, runs, 2)
	for _, r := range runs {
		require.Positive(t, r.Requests)
		b, err := os.ReadFile(filepath.Join(cfg.profileDir, r.Profile))
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(b, []byte{0x1f, 0x8b}), "a pprof profile is gzipped protobuf")
		require.Len(t, r.Components, len(componentNames()))
		var sum float64
		for _, c := range r.Components {
			sum += c
		}
		require.InDelta(t, r.ProfiledCPU, sum, 1e-6*r.ProfiledCPU)
		prof, err := profile.ParseData(b)
		require.NoError(t, err)
		require.NotEmpty(t, prof.Sample, "the calls took CPU while the profile ran")
		var found bool
		for _, s := range prof.Sample {
			for _, loc := range s.Location {
				for _, line := range loc.Line {
					// Any symbolised name: which functions a short
					// profile on a busy machine samples is chance.
					found = found || strings.Contains(line.Function.Name, ".")
				}
			}
		}
		require.True(t, found, "function names are read")
	}
	var md bytes.Buffer
	writeComponents(&md, runs)
	require.Contains(t, md.String(), "| the Stage-3 call (rest) |")
}

func TestDurableTarget(t *testing.T) {
	t.Parallel()
	out := `goos: linux
pkg: github.com/stage4/stage4/audit/segstore
BenchmarkAppend/fsync=true/writers=1-2         	    1237	    199856 ns/op	    1649 B/op	      15 allocs/op
BenchmarkAppend/fsync=true/writers=64-2        	   22533	     10000 ns/op	    1648 B/op	      13 allocs/op
BenchmarkAppend/fsync=false/writers=64-2       	  107364	      4000 ns/op	    1644 B/op	      13 allocs/op
BenchmarkAppend/fsync=true/writers=64-2        	   22533	      6000 ns/op	    1648 B/op	      13 allocs/op
BenchmarkAppend/fsync=false/writers=64-2       	  107364	      3600 ns/op	    1644 B/op	      13 allocs/op
BenchmarkAppend/fsync=true/writers=64-2        	   22533	      8000 ns/op	    1648 B/op	      13 allocs/op
BenchmarkAppend/fsync=false/writers=64-2       	  107364	      4400 ns/op	    1644 B/op	      13 allocs/op
pkg: github.com/stage4/stage4/audit/pgstore
BenchmarkAppend/fsync=true/writers=64-2        	   22533	     99999 ns/op	    1648 B/op	      13 allocs/op
`
	got, ok := durableTarget([]byte(out))
	require.True(t, ok)
	require.True(t, got.Met, "pairs 0.40, 0.60, 0.55: median 0.55")
	require.Contains(t, got.Measured, "0.55x (median of 3 pairs; min 0.40, max 0.60")
	_, ok = durableTarget([]byte("pkg: github.com/stage4/stage4/server\nBenchmarkX-2 1 1 ns/op\n"))
	require.False(t, ok)
}

func TestCalls(t *testing.T) {
	ref := startStage3(t, stage3ref.DefaultTokens())
	addr := serveProxyOn(t, ref.Addr)

	var out bytes.Buffer
	require.NoError(t, runCalls(t.Context(), []string{"--addr", addr, "--n", "25", "--concurrency", "4"}, &out, &bytes.Buffer{}))
	require.Contains(t, out.String(), "25 calls from 4 callers")
	require.Equal(t, 25, ref.Service.Calls())
	require.ErrorContains(t, runCalls(t.Context(), []string{"--addr", "0.0.0.0:1"}, &out, &bytes.Buffer{}), "only 127.0.0.1")
}
