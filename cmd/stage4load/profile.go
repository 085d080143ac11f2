package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/pprof/profile"
)

// profiledRun is a closed-loop run of one configuration during which the
// gateway's process was CPU-profiled. It is outside the interleaved rounds:
// the profiler costs the gateway a few per cent of CPU, so its figures are
// not compared with theirs.
type profiledRun struct {
	Config      string `json:"config"`
	Concurrency int    `json:"concurrency"`
	// Profile is the pprof file written, relative to the report.
	Profile string `json:"profile"`
	// Components is the profile's CPU per request by component (the
	// names of componentNames), in µs; ProfiledCPU is their sum.
	Components  []float64 `json:"components_us_per_req"`
	ProfiledCPU float64   `json:"profiled_cpu_us_per_req"`
	sample
}

// Profile file names in --profile-dir, by configuration.
var profileFiles = map[string]string{
	cfgProxy:  "proxy-cpu.pprof",
	cfgStage4: "stage4-cpu.pprof",
}

// profileAll runs (b) and then (c) at cfg.profileConc for cfg.profileDuration
// after a warm-up, and meanwhile takes a CPU profile of the gateway's
// process from its /debug/pprof/profile endpoint into cfg.profileDir.
func profileAll(ctx context.Context, e env, cfg config, callers map[string]callFunc, progress io.Writer) ([]profiledRun, error) {
	urls := map[string]string{cfgProxy: e.proxyPprof, cfgStage4: e.stage4Pprof}
	if err := os.MkdirAll(cfg.profileDir, 0o755); err != nil {
		return nil, fmt.Errorf("profile dir: %w", err)
	}
	var runs []profiledRun
	for _, c := range []string{cfgProxy, cfgStage4} {
		if urls[c] == "" {
			return nil, fmt.Errorf("profile %s: its process serves no profiles", c)
		}
		if cfg.warmup > 0 {
			if _, _, err := runWorkers(ctx, callers[c], cfg.profileConc, cfg.warmup, false); err != nil {
				return nil, err
			}
		}
		path := filepath.Join(cfg.profileDir, profileFiles[c])
		secs := max(1, int(cfg.profileDuration.Round(time.Second)/time.Second))
		var prof *profile.Profile
		errc := make(chan error, 1)
		go func() {
			var err error
			prof, err = fetchProfile(ctx, fmt.Sprintf("%s?seconds=%d", urls[c], secs), path)
			errc <- err
		}()
		// The load runs a little longer than the profile, so that the
		// profile never sees the machine idle.
		s, err := closedLoop(ctx, callers[c], cfg.profileConc, 0, time.Duration(secs)*time.Second+500*time.Millisecond, e.watcher(c))
		if perr := <-errc; err == nil {
			err = perr
		}
		if err != nil {
			return nil, fmt.Errorf("profile %s: %w", c, err)
		}
		if s.Errors > 0 {
			return nil, fmt.Errorf("profile %s: %d requests failed, first: %s", c, s.Errors, s.FirstError)
		}
		// The requests during the profile: the load ran a little longer.
		comps, total, err := breakdown(prof, int(s.RPS*float64(secs)))
		if err != nil {
			return nil, fmt.Errorf("profile %s: %w", c, err)
		}
		fmt.Fprintf(progress, "profiled %-10s %3d callers: %8.0f req/s  gateway CPU %5.0f ms/1k req (%.0f in the profile)  -> %s\n",
			c, cfg.profileConc, s.RPS, s.CPUPer1k[roleGateway], total, path)
		runs = append(runs, profiledRun{Config: c, Concurrency: cfg.profileConc, Profile: profileFiles[c],
			Components: comps, ProfiledCPU: total, sample: s})
	}
	return runs, nil
}

// fetchProfile saves the CPU profile that url (a /debug/pprof/profile
// endpoint) takes to path, and returns it parsed.
func fetchProfile(ctx context.Context, url, path string) (*profile.Profile, error) {
	b, err := httpGet(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("fetch profile: %w", err)
	}
	p, err := profile.ParseData(b)
	if err != nil {
		return nil, fmt.Errorf("fetch profile: %w", err)
	}
	return p, os.WriteFile(path, b, 0o644)
}
