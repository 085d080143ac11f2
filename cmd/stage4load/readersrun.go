package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/pprof/profile"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// The log directories of the readers measurement in the work directory:
// one per stage4 serve.
const (
	readLogLimited = "readers-limited-audit"
	readLogOff     = "readers-off-audit"
)

// runReaders makes the log, starts the two stage4 serve processes of the
// readers measurement against the Stage-3 on stage3Addr, measures, takes
// the profiles profileDir asks for (empty: none), and stops them.
func runReaders(ctx context.Context, cfg readConfig, bin string, extra []string, stage3Addr string, stage3PID int,
	dir, profileDir string, profileDuration time.Duration, progress io.Writer,
) (*readersResult, error) {
	e, log, stop, err := startReadTargets(ctx, cfg, bin, extra, stage3Addr, dir, profileDir != "", progress)
	if err != nil {
		return nil, err
	}
	defer stop()
	e.stage3PID = stage3PID
	res, err := measureReaders(ctx, e, cfg, progress)
	if err != nil {
		return nil, err
	}
	res.Records, res.LogBytes = log.events, log.bytes
	if profileDir != "" {
		if res.Profiles, err = profileReaders(ctx, e, cfg, profileDir, profileDuration, progress); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// startReadTargets writes a log of cfg.records events in dir (with
// fillLog: executions of the gateway's events, a hundredth of them
// failed), copies it, and starts stage4 serve on each copy, one with the
// default limits on audit reads, the other with limitsOff, both letting
// every caller read. stop ends them.
func startReadTargets(ctx context.Context, cfg readConfig, bin string, extra []string, stage3Addr, dir string, pprof bool,
	progress io.Writer,
) (e readEnv, log filled, stop func(), err error) {
	var children []*child
	var conns []*grpc.ClientConn
	limitedDir, offDir := filepath.Join(dir, readLogLimited), filepath.Join(dir, readLogOff)
	// The logs go with the servers: hundreds of MiB made for one run.
	stop = func() {
		for _, c := range conns {
			_ = c.Close()
		}
		for _, c := range children {
			c.stop()
		}
		if err := errors.Join(os.RemoveAll(limitedDir), os.RemoveAll(offDir)); err != nil {
			fmt.Fprintf(progress, "audit readers: %v\n", err)
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	// A kept work directory may hold the logs of an earlier run.
	if err := errors.Join(os.RemoveAll(limitedDir), os.RemoveAll(offDir)); err != nil {
		return e, log, stop, fmt.Errorf("audit readers: %w", err)
	}
	fmt.Fprintf(progress, "audit readers: writing a log of %d events\n", cfg.records)
	if log, err = fillLog(ctx, limitedDir, cfg.records, 0, 0, progress); err != nil {
		return e, log, stop, fmt.Errorf("audit readers: %w", err)
	}
	// A copy of a closed log is that log, as a backup is.
	if err := copyDir(offDir, limitedDir); err != nil {
		return e, log, stop, fmt.Errorf("audit readers: copy the log: %w", err)
	}
	fmt.Fprintf(progress, "audit readers: %d events, %d MiB of records, written in %v and copied\n",
		log.events, log.bytes>>20, log.took.Round(time.Millisecond))

	start := func(name, logDir string, limits []string) (readTarget, error) {
		addr, aerr := freeAddr()
		metrics, merr := freeAddr()
		if err := errors.Join(aerr, merr); err != nil {
			return readTarget{}, err
		}
		args := []string{"serve",
			"--listen", addr,
			"--stage3-addr", stage3Addr,
			"--stage3-insecure",
			"--audit-log", logDir,
			"--audit-readers", "*",
			"--metrics-listen", metrics,
			"--log-level", "info",
		}
		if pprof {
			args = append(args, "--pprof")
		}
		args = append(append(args, extra...), limits...)
		c, err := spawn(name, addr, filepath.Join(dir, name+".log"), bin, args...)
		if err != nil {
			return readTarget{}, err
		}
		children = append(children, c)
		if err := waitServing(ctx, addr); err != nil {
			return readTarget{}, err
		}
		t := readTarget{pid: c.pid()}
		if pprof {
			t.pprof = "http://" + metrics + "/debug/pprof/profile"
		}
		// A connection for the callers and one for each reader, as
		// separate clients would have.
		for i := range cfg.readers + 1 {
			cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return readTarget{}, fmt.Errorf("dial %s: %w", name, err)
			}
			conns = append(conns, cc)
			if i == 0 {
				t.exec = stage4v1.NewStage4ServiceClient(cc)
			} else {
				t.readers = append(t.readers, cc)
			}
		}
		return t, nil
	}
	if e.limited, err = start("stage4-readers-limited", limitedDir, nil); err != nil {
		return e, log, stop, err
	}
	if e.off, err = start("stage4-readers-off", offDir, limitsOff); err != nil {
		return e, log, stop, err
	}
	return e, log, stop, nil
}

// readProfile is a run of one configuration during which its stage4 was
// CPU-profiled, outside the rounds (the profiler takes a few per cent).
type readProfile struct {
	Config string `json:"config"`
	// Profile is the pprof file written, in the profile directory.
	Profile string `json:"profile"`
	// CPUPerExec is stage4's CPU in the profile per ExecutePlan, in µs:
	// what an execution costs, plus the readers' work spread over them.
	CPUPerExec float64       `json:"profiled_cpu_us_per_execute_plan"`
	Exec       sample        `json:"execute_plan"`
	Readers    *readerSample `json:"readers,omitempty"`
}

// profileReaders runs each configuration once more for d while its
// stage4's CPU profile is taken into dir as readers-<config>-cpu.pprof.
func profileReaders(ctx context.Context, e readEnv, cfg readConfig, dir string, d time.Duration, progress io.Writer) ([]readProfile, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profile dir: %w", err)
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	plan := benchPlan()
	var out []readProfile
	for _, c := range readConfigs {
		p, err := profileRead(ctx, e, c, cfg, dir, secs, plan)
		if err != nil {
			return nil, fmt.Errorf("profile %s: %w", c, err)
		}
		fmt.Fprintf(progress, "profiled %-30s %8.0f req/s, stage4 CPU in the profile %6.0f µs per ExecutePlan -> %s\n",
			readConfigNames[c], p.Exec.RPS, p.CPUPerExec, filepath.Join(dir, p.Profile))
		out = append(out, p)
	}
	return out, nil
}

// profileRead runs configuration c for secs seconds (and a little more)
// after its warm-up, while its stage4's CPU profile is taken.
func profileRead(ctx context.Context, e readEnv, c string, cfg readConfig, dir string, secs int, plan *stage4v1.Plan) (readProfile, error) {
	t := e.target(c)
	if t.pprof == "" {
		return readProfile{}, errors.New("its stage4 serves no profiles")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	name := fmt.Sprintf("readers-%s-cpu.pprof", strings.TrimPrefix(c, "r-"))
	var prof *profile.Profile
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		select {
		case <-started:
		case <-ctx.Done():
			errc <- ctx.Err()
			return
		}
		var err error
		prof, err = fetchProfile(ctx, fmt.Sprintf("%s?seconds=%d", t.pprof, secs), filepath.Join(dir, name))
		errc <- err
	}()
	// The profile starts after the warm-up, and the load runs a little
	// longer than it, so that it never sees an idle moment.
	cfg.measure = time.Duration(secs)*time.Second + 500*time.Millisecond
	rr, err := measureRead(ctx, e, c, cfg, plan, func() { close(started) })
	if err != nil {
		return readProfile{}, err
	}
	if err := <-errc; err != nil {
		return readProfile{}, err
	}
	cpu, err := prof.SampleIndexByName("cpu")
	if err != nil {
		return readProfile{}, err
	}
	var total time.Duration
	for _, s := range prof.Sample {
		total += time.Duration(s.Value[cpu])
	}
	p := readProfile{Config: c, Profile: name, Exec: rr.Exec, Readers: rr.Readers}
	if n := rr.Exec.RPS * float64(secs); n > 0 {
		p.CPUPerExec = float64(total.Microseconds()) / n
	}
	return p, nil
}

// runReadersCommand is "stage4load readers": the audit readers
// measurement alone, against a reference Stage-3 of its own.
func runReadersCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stage4load readers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("stage4-bin", "bin/stage4", "the stage4 binary: runs the gateways and the reference Stage-3")
	var extra []string
	fs.Func("stage4-arg", "an extra argument for \"stage4 serve\" (repeatable)", func(s string) error {
		extra = append(extra, s)
		return nil
	})
	var cfg readConfig
	cfg.flags(fs, "", 300_000)
	workDir := fs.String("work-dir", "", "keep the servers' logs here instead of in a removed temp dir (the audit logs are removed after the run)")
	jsonOut := fs.String("json", "", "write the results as JSON here")
	profileDir := fs.String("profile-dir", "", "after the rounds, run each configuration once more while its stage4 is CPU-profiled, into this directory; empty skips it")
	profileDuration := fs.Duration("profile-duration", 10*time.Second, "length of each profile (whole seconds)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("readers: unexpected arguments %q", fs.Args())
	}
	if err := cfg.check(); err != nil {
		return err
	}
	if cfg.records < 1 {
		return errors.New("readers: --records must be at least 1")
	}
	dir := *workDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "stage4load-readers-"); err != nil {
			return fmt.Errorf("work dir: %w", err)
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	stage3Addr, err := freeAddr()
	if err != nil {
		return err
	}
	s3, err := spawn("reference stage3", stage3Addr, filepath.Join(dir, "stage3.log"),
		*bin, "reference-stage3", "--listen", stage3Addr, "--log-level", "warn")
	if err != nil {
		return err
	}
	defer s3.stop()
	res, err := runReaders(ctx, cfg, *bin, extra, stage3Addr, s3.pid(), dir, *profileDir, *profileDuration, stderr)
	if err != nil {
		return errors.Join(err, s3.alive())
	}
	fmt.Fprintf(stdout, "Command:\n\n```\n%s\n```\n", shellQuote(os.Args))
	writeReadersMarkdown(stdout, res)
	t := res.target()
	fmt.Fprintf(stdout, "\nTarget: %s: %s, met: %v\n", t.Target, t.Measured, t.Met)
	if *jsonOut != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return fmt.Errorf("encode results: %w", err)
		}
		return writeFile(*jsonOut, append(b, '\n'))
	}
	return nil
}

// copyDir copies the directory tree src to dst, which must not exist,
// keeping the files' permissions (the log's key must stay its owner's
// only).
func copyDir(dst, src string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.Mkdir(to, info.Mode().Perm())
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", path)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		return errors.Join(err, out.Close())
	})
}
