package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/server"
)

// The configurations, in the order every round runs them. (d) and (e)
// run only at the --pg-concurrency caller counts.
const (
	cfgDirect = "a-direct"
	cfgProxy  = "b-proxy"
	cfgStage4 = "c-stage4"
	// cfgStage4PG is one stage4 serve on a PostgreSQL audit store.
	cfgStage4PG = "d-stage4-pg"
	// cfgStage4PG2 is two stage4 serve processes on one PostgreSQL
	// database, the calls split evenly across them.
	cfgStage4PG2 = "e-stage4-pg-2"
)

// Process roles whose CPU time is recorded. "gateway" is the proxy's
// process for (b), stage4's for (c), and absent for (a).
const (
	roleGateway  = "gateway"
	roleStage3   = "stage3"
	roleLoadgen  = "loadgen"
	rolePostgres = "postgres" // the database's backends of (d) and (e)
)

// config holds the benchmark flags.
type config struct {
	stage4Bin    string
	stage4Args   []string
	concurrency  []int
	rounds       int
	warmup       time.Duration
	measure      time.Duration
	scaleSizes   []int
	scaleConc    int
	scaleWarmup  time.Duration
	scaleMeasure time.Duration
	soak         time.Duration
	soakConc     int
	openRate     float64
	openDuration time.Duration
	// openFractions are open-loop rates as fractions of (c)'s closed-loop
	// throughput at openBaseConc callers (the median of the rounds).
	openFractions []float64
	openBaseConc  int
	openWarmup    time.Duration
	out           string
	jsonOut       string
	gobench       string
	cpuprofile    string
	// profileDir, when set, receives CPU profiles of (b) and (c), taken
	// after the rounds during runs of profileConc callers.
	profileDir      string
	profileConc     int
	profileDuration time.Duration
	workDir         string
	// pgURL is the PostgreSQL server on which each run creates its own
	// databases for (d) and (e), and drops them afterwards.
	pgURL string
	// pgConcurrency are the caller counts at which (d) and (e) run; empty
	// leaves PostgreSQL out.
	pgConcurrency []int
	// readers is the audit readers measurement (readers.go), after the
	// others; readers.records 0 skips it.
	readers readConfig
	// requestID runs (c) and (d) again with a request_id on every call
	// (requestid.go).
	requestID bool
}

// parseConfig reads the benchmark flags.
func parseConfig(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("stage4load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.stage4Bin, "stage4-bin", "bin/stage4", "the stage4 binary: runs (c) and the reference Stage-3")
	fs.Func("stage4-arg", "an extra argument for \"stage4 serve\" (repeatable)", func(s string) error {
		c.stage4Args = append(c.stage4Args, s)
		return nil
	})
	conc := fs.String("concurrency", "1,16,64", "closed-loop caller counts, comma-separated")
	fs.IntVar(&c.rounds, "rounds", 3, "interleaved rounds of (a), (b), (c) at every concurrency")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "warm-up before each measurement (not recorded)")
	fs.DurationVar(&c.measure, "duration", 3*time.Second, "measured time per configuration, concurrency and round")
	sizes := fs.String("scale-steps", "1,8,64,256", "plan sizes (steps) for the scaling run through (c); empty skips it")
	fs.IntVar(&c.scaleConc, "scale-concurrency", 16, "callers for the scaling run")
	fs.DurationVar(&c.scaleWarmup, "scale-warmup", 500*time.Millisecond, "warm-up per plan size")
	fs.DurationVar(&c.scaleMeasure, "scale-duration", 3*time.Second, "measured time per plan size")
	fs.DurationVar(&c.soak, "soak", 0, "run (c) this long and compare stage4's RSS before and after; 0 skips it")
	fs.IntVar(&c.soakConc, "soak-concurrency", 16, "callers for the soak")
	fs.Float64Var(&c.openRate, "open-rate", 0, "requests/s for an open-loop run of (b) and (c) in every round; 0 skips it")
	openFractions := fs.String("open-fractions", "", "open-loop rates for (b) and (c) in every round, as fractions of (c)'s closed-loop req/s at --open-base-concurrency callers, e.g. 0.5,0.8; empty skips them")
	fs.IntVar(&c.openBaseConc, "open-base-concurrency", 64, "the closed-loop caller count whose (c) throughput --open-fractions scale")
	fs.DurationVar(&c.openDuration, "open-duration", 3*time.Second, "measured duration of each open-loop run")
	fs.DurationVar(&c.openWarmup, "open-warmup", 500*time.Millisecond, "warm-up at the same rate before each open-loop run (not recorded)")
	fs.StringVar(&c.out, "out", "", "write the markdown report here (e.g. docs/PERFORMANCE.md)")
	fs.StringVar(&c.jsonOut, "json", "", "write the raw results as JSON here (e.g. docs/performance.json)")
	fs.StringVar(&c.gobench, "gobench", "", "a file of \"go test -bench\" output to embed in the report")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write a CPU profile of this load tool (its own side only) here")
	fs.StringVar(&c.profileDir, "profile-dir", "", "after the rounds, CPU-profile the proxy's and stage4's processes (served with --pprof) under load and write proxy-cpu.pprof and stage4-cpu.pprof here; empty skips it")
	fs.IntVar(&c.profileConc, "profile-concurrency", 64, "callers for the profiled runs")
	fs.DurationVar(&c.profileDuration, "profile-duration", 10*time.Second, "length of each profile (whole seconds)")
	fs.StringVar(&c.workDir, "work-dir", "", "keep logs and the audit log here instead of a removed temp dir")
	fs.StringVar(&c.pgURL, "postgres-url", defaultPGURL(), "PostgreSQL `server` for (d) and (e): each run creates databases of its own there and drops them; default $"+envPGURL+" or "+pgDefaultURL)
	pgConc := fs.String("pg-concurrency", "16,64", "caller counts at which (d) one and (e) two stage4 replicas on PostgreSQL run; empty leaves PostgreSQL out")
	c.readers.flags(fs, "readers-", 0)
	fs.BoolVar(&c.requestID, "request-id", false, "also run (c) and (d) with a new request_id on every call, right after each, and compare")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err1, err2, err3, err4 error
	c.concurrency, err1 = parseInts(*conc)
	c.scaleSizes, err2 = parseInts(*sizes)
	c.pgConcurrency, err3 = parseInts(*pgConc)
	c.openFractions, err4 = parseFractions(*openFractions)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return c, err
	}
	if len(c.openFractions) > 0 && !slices.Contains(c.concurrency, c.openBaseConc) {
		return c, fmt.Errorf("--open-base-concurrency %d: not in --concurrency, so there is no closed-loop throughput to scale", c.openBaseConc)
	}
	if c.openRate < 0 || c.openDuration <= 0 || c.openWarmup < 0 {
		return c, errors.New("--open-rate must not be negative, --open-duration must be positive and --open-warmup not negative")
	}
	if len(c.concurrency) == 0 || c.rounds < 1 || c.measure <= 0 || c.warmup < 0 {
		return c, errors.New("need at least one concurrency, one round and a positive --duration")
	}
	for _, n := range c.pgConcurrency {
		if !slices.Contains(c.concurrency, n) {
			return c, fmt.Errorf("--pg-concurrency %d: not in --concurrency, so (c) would not run next to it", n)
		}
	}
	for _, n := range c.scaleSizes {
		if n < 1 || n > 256 {
			return c, fmt.Errorf("--scale-steps %d: a plan has 1 to 256 steps", n)
		}
	}
	if c.scaleConc < 1 || c.soakConc < 1 || c.profileConc < 1 {
		return c, errors.New("--scale-concurrency, --soak-concurrency and --profile-concurrency must be at least 1")
	}
	if c.readers.records > 0 {
		if err := c.readers.check(); err != nil {
			return c, err
		}
	}
	return c, nil
}

// parseInts parses "1,16,64"; an empty string is an empty list.
func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want positive integers separated by commas", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseFractions parses "0.5,0.8"; an empty string is an empty list.
func parseFractions(s string) ([]float64, error) {
	var out []float64
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 || v > 2 {
			return nil, fmt.Errorf("%q: want fractions above 0 and at most 2, separated by commas", s)
		}
		out = append(out, v)
	}
	return out, nil
}

// runBench starts Stage-3, the proxy and stage4 as processes, measures, and
// writes the report.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	if cfg.cpuprofile != "" {
		f, err := os.Create(cfg.cpuprofile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	dir := cfg.workDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "stage4load-"); err != nil {
			return fmt.Errorf("work dir: %w", err)
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary for the proxy: %w", err)
	}

	e, stopAll, err := startProcesses(cfg, self, dir)
	if err != nil {
		return err
	}
	defer stopAll()

	fsync, err := measureFsync(dir, fsyncSamples)
	if err != nil {
		return err
	}
	res, err := measureAll(ctx, e, cfg, ms(fsync), stderr)
	if err == nil && cfg.readers.records > 0 {
		// Last: its two stage4 processes and their logs are its own, and
		// the Stage-3 is the others'.
		res.Readers, err = runReaders(ctx, cfg.readers, cfg.stage4Bin, cfg.stage4Args, e.stage3Addr, e.stage3PID, dir, "", 0, stderr)
		if err == nil {
			res.Targets = append(res.Targets, res.Readers.target())
		}
	}
	// A server that died explains failed requests better than they do.
	for _, c := range e.children {
		err = errors.Join(err, c.alive())
	}
	if err != nil {
		return err
	}
	res.Meta = newMeta(cfg, dir)
	res.Meta.FsyncP50 = ms(fsync)
	if len(e.pgDatabases) > 0 {
		if res.PG, err = describePG(ctx, cfg, e, stderr); err != nil {
			return err
		}
	}
	return writeOutputs(res, cfg, stdout)
}

// env is what the measurements run against: clients of the three
// configurations and the processes to watch. The test builds one from
// in-process servers.
type env struct {
	direct    stage3v1.Stage3ServiceClient
	proxy     stage4v1.Stage4ServiceClient
	stage4    stage4v1.Stage4ServiceClient
	stage3PID int
	// stage3Addr is the reference Stage-3's address, for the gateways of
	// the audit readers measurement.
	stage3Addr string
	proxyPID   int
	stage4PID  int
	// stage4PG is (d), stage4PG2 the two replicas of (e); nil without
	// PostgreSQL.
	stage4PG     stage4v1.Stage4ServiceClient
	stage4PG2    []stage4v1.Stage4ServiceClient
	stage4PGPID  int
	stage4PG2PID []int
	// pgDatabases are the URLs of the databases of (d) and (e).
	pgDatabases []string
	// pgBackends returns the process ids of the server's sessions on the
	// database of (d) or (e), when the server runs on this machine.
	pgBackends func(cfgName string) []int
	children   []*child
	// stage4Metrics is stage4's /metrics URL; empty when there is none.
	stage4Metrics string
	// proxyPprof and stage4Pprof are the CPU profile endpoints of (b) and
	// (c); empty unless --profile-dir asked for them.
	proxyPprof, stage4Pprof string
}

// startProcesses spawns the reference Stage-3, the proxy and stage4 on
// fresh loopback ports and dials them. stop ends them all.
func startProcesses(cfg config, self, dir string) (e env, stop func(), err error) {
	var conns []*grpc.ClientConn
	var drops []func() error
	stop = func() {
		for _, c := range conns {
			_ = c.Close()
		}
		// Stop in reverse start order: gateways before the Stage-3 they use.
		for _, c := range slices.Backward(e.children) {
			c.stop()
		}
		// The databases last: nothing uses them any more.
		for _, drop := range drops {
			if derr := drop(); derr != nil {
				fmt.Fprintf(os.Stderr, "stage4load: %v\n", derr)
			}
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	addr := func() string {
		a, aerr := freeAddr()
		err = errors.Join(err, aerr)
		return a
	}
	stage3Addr, proxyAddr, stage4Addr, metricsAddr, proxyPprofAddr := addr(), addr(), addr(), addr(), addr()
	if err != nil {
		return e, stop, err
	}
	// Stage-3's own call log is off (warn): it is the stand-in for the
	// executor, and its logging would only take CPU from what is measured.
	s3, err := spawn("reference stage3", stage3Addr, filepath.Join(dir, "stage3.log"),
		cfg.stage4Bin, "reference-stage3", "--listen", stage3Addr, "--log-level", "warn")
	if err != nil {
		return e, stop, err
	}
	e.children = append(e.children, s3)
	pxArgs := []string{"proxy", "--listen", proxyAddr, "--stage3-addr", stage3Addr}
	s4Extra := []string{}
	if cfg.profileDir != "" {
		pxArgs = append(pxArgs, "--pprof-listen", proxyPprofAddr)
		s4Extra = append(s4Extra, "--pprof")
		e.proxyPprof = "http://" + proxyPprofAddr + "/debug/pprof/profile"
		e.stage4Pprof = "http://" + metricsAddr + "/debug/pprof/profile"
	}
	px, err := spawn("proxy", proxyAddr, filepath.Join(dir, "proxy.log"), self, pxArgs...)
	if err != nil {
		return e, stop, err
	}
	e.children = append(e.children, px)
	s4args := append([]string{"serve",
		"--listen", stage4Addr,
		"--stage3-addr", stage3Addr,
		"--stage3-insecure",
		"--audit-log", filepath.Join(dir, "audit"),
		"--metrics-listen", metricsAddr,
		"--log-level", "info",
	}, append(s4Extra, cfg.stage4Args...)...)
	s4, err := spawn("stage4", stage4Addr, filepath.Join(dir, "stage4.log"), cfg.stage4Bin, s4args...)
	if err != nil {
		return e, stop, err
	}
	e.children = append(e.children, s4)
	e.stage3PID, e.proxyPID, e.stage4PID = s3.pid(), px.pid(), s4.pid()
	e.stage3Addr = stage3Addr
	e.stage4Metrics = "http://" + metricsAddr + "/metrics"

	// (d) and (e): the same stage4 serve, each on a database of its own
	// (so that neither's log grows with the other's load), made for this
	// run. Two replicas of (e) share their database, as replicas do.
	var pgAddrs []string // (d), then the two of (e)
	if len(cfg.pgConcurrency) > 0 {
		backends, closeBackends, berr := pgBackendFinder(cfg.pgURL)
		if berr != nil {
			return e, stop, berr
		}
		drops = append(drops, closeBackends)
		for _, spec := range []struct{ replicas []string }{
			{replicas: []string{"bench-pg-1"}},
			{replicas: []string{"bench-pg-2a", "bench-pg-2b"}},
		} {
			dbURL, drop, cerr := createDatabase(context.Background(), cfg.pgURL)
			if cerr != nil {
				return e, stop, cerr
			}
			drops = append(drops, drop)
			e.pgDatabases = append(e.pgDatabases, dbURL)
			for _, name := range spec.replicas {
				a, m := addr(), addr()
				if err != nil {
					return e, stop, err
				}
				args := append([]string{"serve",
					"--listen", a,
					"--stage3-addr", stage3Addr,
					"--stage3-insecure",
					"--audit-log", dbURL,
					"--replica-name", name,
					"--metrics-listen", m,
					"--log-level", "info",
				}, cfg.stage4Args...)
				pc, serr := spawn("stage4 "+name, a, filepath.Join(dir, name+".log"), cfg.stage4Bin, args...)
				if serr != nil {
					return e, stop, serr
				}
				e.children = append(e.children, pc)
				pgAddrs = append(pgAddrs, a)
				if len(spec.replicas) == 1 {
					e.stage4PGPID = pc.pid()
				} else {
					e.stage4PG2PID = append(e.stage4PG2PID, pc.pid())
				}
			}
		}
		dbs := map[string]string{cfgStage4PG: e.pgDatabases[0], cfgStage4PG2: e.pgDatabases[1], cfgStage4PGRID: e.pgDatabases[0]}
		e.pgBackends = func(cfgName string) []int { return backends(dbs[cfgName]) }
	}

	dial := func(a string) *grpc.ClientConn {
		cc, derr := grpc.NewClient("passthrough:///"+a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		err = errors.Join(err, derr)
		if cc != nil {
			conns = append(conns, cc)
		}
		return cc
	}
	c3, cp, c4 := dial(stage3Addr), dial(proxyAddr), dial(stage4Addr)
	if err != nil {
		return e, stop, fmt.Errorf("dial: %w", err)
	}
	e.direct = stage3v1.NewStage3ServiceClient(c3)
	e.proxy = stage4v1.NewStage4ServiceClient(cp)
	e.stage4 = stage4v1.NewStage4ServiceClient(c4)
	for i, a := range pgAddrs {
		cc := dial(a)
		if err != nil {
			return e, stop, fmt.Errorf("dial: %w", err)
		}
		if i == 0 {
			e.stage4PG = stage4v1.NewStage4ServiceClient(cc)
		} else {
			e.stage4PG2 = append(e.stage4PG2, stage4v1.NewStage4ServiceClient(cc))
		}
	}
	return e, stop, nil
}

// caller returns the call function for one configuration and plan. Every
// call checks that Stage-3 returned one result per step, so that a
// configuration cannot look fast by doing nothing.
func (e env) caller(cfgName string, p *stage4v1.Plan) callFunc {
	want := len(p.GetSteps())
	check := func(got int) error {
		if got != want {
			return fmt.Errorf("got %d step results, want %d", got, want)
		}
		return nil
	}
	switch cfgName {
	case cfgDirect:
		req := server.ToStage3(p)
		return func(ctx context.Context) error {
			res, err := e.direct.ExecuteMultiDomainPlan(ctx, req)
			if err != nil {
				return err
			}
			return check(len(res.GetResults()))
		}
	default:
		var clients []stage4v1.Stage4ServiceClient
		switch cfgName {
		case cfgProxy:
			clients = append(clients, e.proxy)
		case cfgStage4:
			clients = append(clients, e.stage4)
		case cfgStage4PG:
			clients = append(clients, e.stage4PG)
		case cfgStage4PG2:
			clients = e.stage4PG2
		case cfgStage4RID:
			return keyedCaller([]stage4v1.Stage4ServiceClient{e.stage4}, p, check)
		case cfgStage4PGRID:
			return keyedCaller([]stage4v1.Stage4ServiceClient{e.stage4PG}, p, check)
		}
		// Calls take turns over the clients, as a load balancer in front
		// of the replicas would spread them.
		var next atomic.Uint64
		req := &stage4v1.ExecutePlanRequest{Plan: p}
		return func(ctx context.Context) error {
			client := clients[int(next.Add(1)%uint64(len(clients)))]
			res, err := client.ExecutePlan(ctx, req)
			if err != nil {
				return err
			}
			return check(len(res.GetResult().GetResults()))
		}
	}
}

// watcher returns e.watch for cfgName, to be called when the measurement
// starts.
func (e env) watcher(cfgName string) func() []watched {
	return func() []watched { return e.watch(cfgName) }
}

// watch lists the processes whose CPU a measurement of cfgName records.
func (e env) watch(cfgName string) []watched {
	w := []watched{{role: roleStage3, pid: e.stage3PID}, {role: roleLoadgen, pid: os.Getpid()}}
	switch cfgName {
	case cfgProxy:
		w = append(w, watched{role: roleGateway, pid: e.proxyPID})
	case cfgStage4, cfgStage4RID:
		w = append(w, watched{role: roleGateway, pid: e.stage4PID})
	case cfgStage4PG, cfgStage4PGRID:
		w = append(w, watched{role: roleGateway, pid: e.stage4PGPID})
	case cfgStage4PG2:
		for _, pid := range e.stage4PG2PID {
			w = append(w, watched{role: roleGateway, pid: pid}) // summed: the gateway is both
		}
	}
	if e.pgBackends != nil && (cfgName == cfgStage4PG || cfgName == cfgStage4PG2 || cfgName == cfgStage4PGRID) {
		for _, pid := range e.pgBackends(cfgName) {
			w = append(w, watched{role: rolePostgres, pid: pid, optional: true})
		}
	}
	return w
}

// measureAll runs every measurement the config asks for and returns the raw
// results with their summaries. Any failed request fails the whole run: a
// benchmark with errors measures the wrong thing.
func measureAll(ctx context.Context, e env, cfg config, fsyncP50 float64, progress io.Writer) (*results, error) {
	res := &results{}
	var err error
	if res.Memory.StartKiB, err = rssKiB(e.stage4PID); err != nil {
		return nil, err
	}
	plan := benchPlan()
	res.Plan = describePlan(plan)
	configs := []string{cfgDirect, cfgProxy, cfgStage4}
	callers := map[string]callFunc{}
	for _, c := range configs {
		callers[c] = e.caller(c, plan)
	}
	pg := e.stage4PG != nil && len(e.stage4PG2) > 0
	if pg {
		callers[cfgStage4PG] = e.caller(cfgStage4PG, plan)
		callers[cfgStage4PG2] = e.caller(cfgStage4PG2, plan)
	}
	if cfg.requestID {
		callers[cfgStage4RID] = e.caller(cfgStage4RID, plan)
		if pg {
			callers[cfgStage4PGRID] = e.caller(cfgStage4PGRID, plan)
		}
	}
	// roundConfigs are the configurations run at conc: (d) and (e) right
	// after (c), so that they meet the same machine as the file store.
	roundConfigs := func(conc int) []string {
		list := configs
		if pg && slices.Contains(cfg.pgConcurrency, conc) {
			list = []string{cfgDirect, cfgProxy, cfgStage4, cfgStage4PG, cfgStage4PG2}
		}
		if cfg.requestID {
			list = withRequestIDs(list)
		}
		return list
	}

	// Interleaved rounds: drift on the machine (other load, CPU frequency,
	// the audit log growing) spreads over all configurations alike.
	var oneCallerFsyncs []float64
	for r := 1; r <= cfg.rounds; r++ {
		for _, conc := range cfg.concurrency {
			for _, c := range roundConfigs(conc) {
				// What an fsync costs inside stage4 with one caller is what
				// the one-caller latency target is made of.
				watchFsync := c == cfgStage4 && conc == 1 && e.stage4Metrics != ""
				var before fsyncTotals
				if watchFsync {
					if before, err = scrapeFsync(ctx, e.stage4Metrics); err != nil {
						return nil, err
					}
				}
				s, err := closedLoop(ctx, callers[c], conc, cfg.warmup, cfg.measure, e.watcher(c))
				if err != nil {
					return nil, fmt.Errorf("round %d, %s, %d callers: %w", r, c, conc, err)
				}
				if watchFsync {
					after, err := scrapeFsync(ctx, e.stage4Metrics)
					if err != nil {
						return nil, err
					}
					if n := after.count - before.count; n > 0 {
						oneCallerFsyncs = append(oneCallerFsyncs, 1000*(after.sum-before.sum)/n)
					}
				}
				gw := "-"
				if c != cfgDirect {
					gw = fmt.Sprintf("%.0f", s.CPUPer1k[roleGateway])
				}
				fmt.Fprintf(progress, "round %d/%d %-13s %3d callers: %8.0f req/s  p50 %7.3f ms  p99 %7.3f ms  gateway CPU %5s ms/1k req\n",
					r, cfg.rounds, c, conc, s.RPS, s.P50, s.P99, gw)
				if s.Errors > 0 {
					return nil, fmt.Errorf("round %d, %s, %d callers: %d of %d requests failed, first: %s",
						r, c, conc, s.Errors, s.Requests+s.Errors, s.FirstError)
				}
				res.Rounds = append(res.Rounds, roundResult{Round: r, Config: c, Concurrency: conc, sample: s})
			}
		}
	}
	if len(oneCallerFsyncs) > 0 {
		st := newStat(oneCallerFsyncs)
		res.Stage4Fsync1 = &st
	}
	res.summarize(cfg, fsyncP50)

	if err := runOpenLoops(ctx, res, cfg, callers, progress); err != nil {
		return nil, err
	}

	if cfg.profileDir != "" {
		if res.Profiles, err = profileAll(ctx, e, cfg, callers, progress); err != nil {
			return nil, err
		}
	}

	for _, n := range cfg.scaleSizes {
		p := scalePlan(n)
		s, err := closedLoop(ctx, e.caller(cfgStage4, p), cfg.scaleConc, cfg.scaleWarmup, cfg.scaleMeasure, e.watcher(cfgStage4))
		if err != nil {
			return nil, fmt.Errorf("scaling, %d steps: %w", n, err)
		}
		fmt.Fprintf(progress, "scaling  %3d steps %3d callers: %8.0f req/s  p50 %7.3f ms  stage4 CPU %7.1f ms/1k req\n",
			n, cfg.scaleConc, s.RPS, s.P50, s.CPUPer1k[roleGateway])
		if s.Errors > 0 {
			return nil, fmt.Errorf("scaling, %d steps: %d requests failed, first: %s", n, s.Errors, s.FirstError)
		}
		res.Scaling = append(res.Scaling, scaleResult{Steps: n, Bindings: len(p.GetDataBindings()), Concurrency: cfg.scaleConc, sample: s})
	}

	if cfg.soak > 0 {
		soak := &soakResult{Duration: cfg.soak.String(), Concurrency: cfg.soakConc}
		if soak.BeforeKiB, err = rssKiB(e.stage4PID); err != nil {
			return nil, err
		}
		s, err := closedLoop(ctx, callers[cfgStage4], cfg.soakConc, 0, cfg.soak, e.watcher(cfgStage4))
		if err != nil {
			return nil, fmt.Errorf("soak: %w", err)
		}
		if s.Errors > 0 {
			return nil, fmt.Errorf("soak: %d requests failed, first: %s", s.Errors, s.FirstError)
		}
		if soak.AfterKiB, err = rssKiB(e.stage4PID); err != nil {
			return nil, err
		}
		soak.sample = s
		fmt.Fprintf(progress, "soak %v %d callers: %.0f req/s, %d requests; stage4 RSS %d -> %d KiB\n",
			cfg.soak, cfg.soakConc, s.RPS, s.Requests, soak.BeforeKiB, soak.AfterKiB)
		res.Memory.Soak = soak
	}
	if res.Memory.EndKiB, err = rssKiB(e.stage4PID); err != nil {
		return nil, err
	}
	return res, nil
}

// newMeta records where and how the run happened.
func newMeta(cfg config, dir string) meta {
	m := meta{
		Date:      time.Now().UTC().Format(time.RFC3339),
		GoVersion: runtime.Version(),
		GOOS:      runtime.GOOS,
		GOARCH:    runtime.GOARCH,
		NumCPU:    runtime.NumCPU(),
		Command:   shellQuote(os.Args),
	}
	if cfg.workDir != "" {
		m.WorkDir = dir // a temp dir is gone by the time anyone reads the report
	}
	return m
}

// shellQuote renders args as a command a shell would run unchanged.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./:,@") == "" {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
