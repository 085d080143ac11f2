package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
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

// componentNames names the entries of profiledRun.Components.
func componentNames() []string {
	names := make([]string, 0, len(components)+1)
	for _, c := range components {
		names = append(names, c.name)
	}
	return append(names, "other")
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
		errc := make(chan error, 1)
		go func() { errc <- fetchProfile(ctx, fmt.Sprintf("%s?seconds=%d", urls[c], secs), path) }()
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
		prof, err := readCPUProfile(path)
		if err != nil {
			return nil, err
		}
		// The requests during the profile: the load ran a little longer.
		comps, total := prof.breakdown(int(s.RPS * float64(secs)))
		fmt.Fprintf(progress, "profiled %-10s %3d callers: %8.0f req/s  gateway CPU %5.0f ms/1k req (%.0f in the profile)  -> %s\n",
			c, cfg.profileConc, s.RPS, s.CPUPer1k[roleGateway], total, path)
		runs = append(runs, profiledRun{Config: c, Concurrency: cfg.profileConc, Profile: profileFiles[c],
			Components: comps, ProfiledCPU: total, sample: s})
	}
	return runs, nil
}

// fetchProfile saves the CPU profile that url (a /debug/pprof/profile
// endpoint) takes.
func fetchProfile(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetch profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("fetch profile: %s: %s", resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("fetch profile: %w", err)
	}
	return f.Close()
}
