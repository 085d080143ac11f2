package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// The audit readers measurement (issue 18): ExecutePlan's closed-loop
// throughput against stage4 serve on a large log, alone and while readers
// list the log by type over and over, once with serve's default limits on
// audit reads and once with them out of reach (the gateway as the issue
// measured it). Each configuration runs after the others in every round.
const (
	// cfgReadNone is ExecutePlan alone, on the server with the default
	// limits (which apply to audit reads only, so to none here).
	cfgReadNone = "r-none"
	// cfgReadLimited is ExecutePlan while the readers read, on the server
	// with the default limits.
	cfgReadLimited = "r-limited"
	// cfgReadOff is the same on the server with the limits off.
	cfgReadOff = "r-off"
)

// readConfigs are the configurations in the order every round runs them.
var readConfigs = []string{cfgReadNone, cfgReadLimited, cfgReadOff}

// readConfigNames are the configurations as the report names them.
var readConfigNames = map[string]string{
	cfgReadNone:    "(a) no readers",
	cfgReadLimited: "(b) readers, default limits",
	cfgReadOff:     "(b') readers, limits off",
}

// limitsOff are the serve flags that put the limits on audit reads out of
// reach.
var limitsOff = []string{"--max-concurrent-audit-reads", "64", "--audit-read-share", "64", "--audit-read-max-scanned", "1000000000"}

// The readers' back-off after a refusal (RESOURCE_EXHAUSTED) or another
// error, as a gRPC client's retry policy would: doubling from the first to
// the most, with jitter, and back to the first after an answer.
const (
	readerBackoff    = 100 * time.Millisecond
	readerMaxBackoff = time.Second
)

// readConfig holds the flags of the readers measurement.
type readConfig struct {
	// records is the size of the log the servers start on, in events; 0
	// skips the measurement.
	records int
	readers int
	callers int
	rounds  int
	warmup  time.Duration
	measure time.Duration
	// eventType is what the readers list.
	eventType stage4v1.AuditEventType
	pageSize  int
	deadline  time.Duration
}

// flags defines the measurement's flags on fs: "readers" is the number of
// readers, the others are named prefix+name ("" in the readers
// subcommand, "readers-" in the benchmark's).
func (c *readConfig) flags(fs *flag.FlagSet, prefix string, records int) {
	n := func(s string) string { return prefix + s }
	fs.IntVar(&c.records, n("records"), records, "events in the log the readers' stage4 processes start on; 0 skips the measurement")
	fs.IntVar(&c.readers, "readers", 8, "concurrent readers, each on a connection of its own")
	fs.IntVar(&c.callers, n("concurrency"), 16, "closed-loop ExecutePlan callers")
	fs.IntVar(&c.rounds, n("rounds"), 3, "interleaved rounds of no readers, readers with the default limits, readers with the limits off")
	fs.DurationVar(&c.warmup, n("warmup"), time.Second, "warm-up of each configuration, readers reading (not recorded)")
	fs.DurationVar(&c.measure, n("duration"), 3*time.Second, "measured time of each configuration in each round")
	c.eventType = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED
	fs.Func(n("type"), "the `type` the readers list (PLAN_RECEIVED, EXECUTION_STARTED, EXECUTION_COMPLETED, EXECUTION_FAILED; default PLAN_RECEIVED)", func(s string) error {
		v, ok := stage4v1.AuditEventType_value["AUDIT_EVENT_TYPE_"+strings.TrimPrefix(s, "AUDIT_EVENT_TYPE_")]
		if !ok || v == 0 {
			return fmt.Errorf("%q: not an audit event type", s)
		}
		c.eventType = stage4v1.AuditEventType(v)
		return nil
	})
	fs.IntVar(&c.pageSize, n("page-size"), 1000, "page_size of the readers' calls (1 to 1000)")
	fs.DurationVar(&c.deadline, n("deadline"), 10*time.Second, "deadline of each reader's call")
}

// check refuses settings that measure nothing.
func (c *readConfig) check() error {
	if c.records < 0 || c.readers < 1 || c.callers < 1 || c.rounds < 1 || c.measure <= 0 || c.warmup < 0 ||
		c.pageSize < 1 || c.pageSize > 1000 || c.deadline <= 0 {
		return errors.New("audit readers: want at least 1 reader, caller and round, a page size of 1 to 1000 and positive durations")
	}
	return nil
}

// typeName is the event type without its enum prefix.
func (c *readConfig) typeName() string {
	return strings.TrimPrefix(c.eventType.String(), "AUDIT_EVENT_TYPE_")
}

// readTarget is one stage4 serve of the measurement: a client for the
// ExecutePlan callers and a connection for each reader.
type readTarget struct {
	exec    stage4v1.Stage4ServiceClient
	readers []grpc.ClientConnInterface
	pid     int
	// pprof is the CPU profile endpoint; empty when not profiled.
	pprof string
}

// readEnv is what the measurement runs against. The test builds one from
// in-process gateways.
type readEnv struct {
	limited, off readTarget
	stage3PID    int
}

// target is the server a configuration runs on.
func (e readEnv) target(cfgName string) readTarget {
	if cfgName == cfgReadOff {
		return e.off
	}
	return e.limited
}

// readerSample is what the readers got during one measured phase: the
// calls that ended in it.
type readerSample struct {
	OK      int `json:"ok"`
	Refused int `json:"resource_exhausted"`
	Other   int `json:"other_errors"`
	// FirstOther is the first of the other errors.
	FirstOther    string  `json:"first_other_error,omitempty"`
	Records       int     `json:"records"`
	RecordsPerSec float64 `json:"records_per_s"`
	OKPerSec      float64 `json:"ok_per_s"`
	RefusedPerSec float64 `json:"refused_per_s"`
	// P50 and P99 are of the answered calls, client-observed: waiting for
	// a turn included.
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
}

// readRound is one configuration in one round.
type readRound struct {
	Round  int    `json:"round"`
	Config string `json:"config"`
	// Exec is ExecutePlan's closed loop; its CPU is by role, the gateway
	// being that configuration's stage4.
	Exec    sample        `json:"execute_plan"`
	Readers *readerSample `json:"readers,omitempty"`
}

// readSummaryRow is one configuration across rounds.
type readSummaryRow struct {
	Config string `json:"config"`
	Errors int    `json:"execute_plan_errors"`
	RPS    stat   `json:"rps"`
	P50    stat   `json:"p50_ms"`
	P99    stat   `json:"p99_ms"`
	// GatewayCores and LoadgenCores are the CPU seconds per second that
	// stage4 and the load generator (callers and readers) used.
	GatewayCores  stat  `json:"gateway_cpu_cores"`
	LoadgenCores  stat  `json:"loadgen_cpu_cores"`
	RecordsPerSec *stat `json:"reader_records_per_s,omitempty"`
	OKPerSec      *stat `json:"reader_ok_per_s,omitempty"`
	RefusedPerSec *stat `json:"reader_refused_per_s,omitempty"`
	ReadP50       *stat `json:"reader_p50_ms,omitempty"`
	ReadP99       *stat `json:"reader_p99_ms,omitempty"`
	ReadOther     int   `json:"reader_other_errors"`
}

// readersResult is the whole measurement; it goes into the JSON as it is.
type readersResult struct {
	Records   int    `json:"log_records_at_start"`
	LogBytes  int64  `json:"log_bytes_at_start"`
	EventType string `json:"reader_type"`
	Readers   int    `json:"readers"`
	Callers   int    `json:"callers"`
	PageSize  int    `json:"page_size"`
	Deadline  string `json:"reader_deadline"`
	Warmup    string `json:"warmup"`
	Measure   string `json:"duration"`
	// LimitsOff are the serve flags of (b').
	LimitsOff []string         `json:"limits_off_flags"`
	Rounds    []readRound      `json:"rounds"`
	Summary   []readSummaryRow `json:"summary"`
	// RatioLimited and RatioOff are ExecutePlan's throughput with readers
	// over without, paired within each round.
	RatioLimited stat          `json:"rps_limited_over_none"`
	RatioOff     stat          `json:"rps_off_over_none"`
	Profiles     []readProfile `json:"profiles,omitempty"`
}

// The target of issue 18.
const targetReadersRatio = 0.7

// target is issue 18's target, checked against the rounds.
func (r *readersResult) target() targetCheck {
	return targetCheck{
		Target: fmt.Sprintf("ExecutePlan throughput at %d callers with %d readers listing %s by page of %d (serve's default limits) >= %.1fx without readers",
			r.Callers, r.Readers, r.EventType, r.PageSize, targetReadersRatio),
		Measured: fmt.Sprintf("%.3fx (median; min %.3f, max %.3f); limits off: %.3fx", r.RatioLimited.Median, r.RatioLimited.Min,
			r.RatioLimited.Max, r.RatioOff.Median),
		Met: r.RatioLimited.Median >= targetReadersRatio,
	}
}

// measureReaders runs the interleaved rounds. A failed ExecutePlan fails
// the run only without readers: with them, failures are what is measured.
func measureReaders(ctx context.Context, e readEnv, cfg readConfig, progress io.Writer) (*readersResult, error) {
	res := &readersResult{
		EventType: cfg.typeName(), Readers: cfg.readers, Callers: cfg.callers, PageSize: cfg.pageSize,
		Deadline: cfg.deadline.String(), Warmup: cfg.warmup.String(), Measure: cfg.measure.String(), LimitsOff: limitsOff,
	}
	plan := benchPlan()
	for r := 1; r <= cfg.rounds; r++ {
		for _, c := range readConfigs {
			rr, err := measureRead(ctx, e, c, cfg, plan, nil)
			if err != nil {
				return nil, fmt.Errorf("audit readers, round %d, %s: %w", r, c, err)
			}
			rr.Round = r
			s := rr.Exec
			line := fmt.Sprintf("readers round %d/%d %-30s %3d callers: %8.0f req/s  p50 %7.3f ms  p99 %8.3f ms  stage4 %.2f cores",
				r, cfg.rounds, readConfigNames[c], cfg.callers, s.RPS, s.P50, s.P99, s.CPU[roleGateway]/s.Elapsed)
			if x := rr.Readers; x != nil {
				line += fmt.Sprintf("; readers %6.0f records/s, %5.1f ok/s, %5.1f refused/s, %d other", x.RecordsPerSec, x.OKPerSec, x.RefusedPerSec, x.Other)
			}
			fmt.Fprintln(progress, line)
			if s.Errors > 0 && c == cfgReadNone {
				return nil, fmt.Errorf("audit readers, round %d, %s: %d of %d requests failed, first: %s",
					r, c, s.Errors, s.Requests+s.Errors, s.FirstError)
			}
			res.Rounds = append(res.Rounds, rr)
		}
	}
	res.summarize()
	return res, nil
}

// measureRead runs one configuration: its readers (if any) from the start
// of the warm-up to the end of the measured phase, ExecutePlan's callers
// warming up, then measured. onMeasure, if not nil, is called when the
// measured phase begins.
func measureRead(ctx context.Context, e readEnv, cfgName string, cfg readConfig, plan *stage4v1.Plan, onMeasure func()) (readRound, error) {
	t := e.target(cfgName)
	call := env{stage4: t.exec}.caller(cfgStage4, plan)
	var pool *readerPool
	if cfgName != cfgReadNone {
		pool = startReaders(ctx, t.readers, cfg)
	}
	stopReaders := func() []readerCall {
		if pool == nil {
			return nil
		}
		calls := pool.stop()
		pool = nil
		return calls
	}
	defer stopReaders()
	if cfg.warmup > 0 {
		if _, _, err := runWorkers(ctx, call, cfg.callers, cfg.warmup, false); err != nil {
			return readRound{}, err
		}
	}
	watch := func() []watched {
		return []watched{{role: roleGateway, pid: t.pid}, {role: roleStage3, pid: e.stage3PID}, {role: roleLoadgen, pid: os.Getpid()}}
	}
	if onMeasure != nil {
		onMeasure()
	}
	t0 := time.Now()
	s, err := closedLoop(ctx, call, cfg.callers, 0, cfg.measure, watch)
	t1 := time.Now()
	if err != nil {
		return readRound{}, err
	}
	rr := readRound{Config: cfgName, Exec: s}
	if cfgName != cfgReadNone {
		rs := summarizeReaders(stopReaders(), t0, t1)
		rr.Readers = &rs
	}
	return rr, nil
}

// readerCall is one ListAuditEvents call of a reader.
type readerCall struct {
	end     time.Time
	took    time.Duration
	code    codes.Code
	err     error // for codes other than OK
	records int
}

// summarizeReaders counts the calls that ended between t0 and t1.
func summarizeReaders(calls []readerCall, t0, t1 time.Time) readerSample {
	var s readerSample
	var lats []time.Duration
	for _, c := range calls {
		if c.end.Before(t0) || c.end.After(t1) {
			continue
		}
		switch c.code {
		case codes.OK:
			s.OK++
			s.Records += c.records
			lats = append(lats, c.took)
		case codes.ResourceExhausted:
			s.Refused++
		default:
			if s.Other == 0 {
				s.FirstOther = c.err.Error()
			}
			s.Other++
		}
	}
	secs := t1.Sub(t0).Seconds()
	s.RecordsPerSec = float64(s.Records) / secs
	s.OKPerSec = float64(s.OK) / secs
	s.RefusedPerSec = float64(s.Refused) / secs
	if len(lats) > 0 {
		slices.Sort(lats)
		s.P50, s.P99 = ms(percentile(lats, 0.5)), ms(percentile(lats, 0.99))
	}
	return s
}

// readerPool is readers running until stop.
type readerPool struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	calls  [][]readerCall // by reader
}

// startReaders starts a reader on each of conns: each lists cfg.eventType
// by pages of cfg.pageSize, following next_page_token and starting over at
// the end, each call with cfg.deadline; after a refusal or another error it
// backs off before it tries again.
func startReaders(ctx context.Context, conns []grpc.ClientConnInterface, cfg readConfig) *readerPool {
	ctx, cancel := context.WithCancel(ctx)
	p := &readerPool{cancel: cancel, calls: make([][]readerCall, len(conns))}
	for i, cc := range conns {
		p.wg.Go(func() { p.calls[i] = read(ctx, cc, cfg) })
	}
	return p
}

// stop ends the readers and returns their calls; a call cut short by the
// stop is not among them.
func (p *readerPool) stop() []readerCall {
	p.cancel()
	p.wg.Wait()
	var all []readerCall
	for _, c := range p.calls {
		all = append(all, c...)
	}
	return all
}

// read is one reader, until ctx ends.
func read(ctx context.Context, cc grpc.ClientConnInterface, cfg readConfig) []readerCall {
	var calls []readerCall
	token := ""
	backoff := readerBackoff
	codec := grpc.ForceCodec(pageCodec{})
	for ctx.Err() == nil {
		req := &stage4v1.ListAuditEventsRequest{Type: cfg.eventType, PageSize: int32(cfg.pageSize), PageToken: token}
		page := &pageScan{want: cfg.eventType}
		cctx, cancel := context.WithTimeout(ctx, cfg.deadline)
		t0 := time.Now()
		err := cc.Invoke(cctx, stage4v1.Stage4Service_ListAuditEvents_FullMethodName, req, page, codec)
		cancel()
		if ctx.Err() != nil {
			break // stopped: this call is not an answer
		}
		c := readerCall{end: time.Now(), took: time.Since(t0), code: status.Code(err), err: err}
		if err == nil {
			c.records = page.events
			token = page.next
			backoff = readerBackoff
			calls = append(calls, c)
			continue
		}
		calls = append(calls, c)
		// Jitter keeps readers refused together from coming back together.
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, readerMaxBackoff)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return calls
}

// pageCodec is the codec of the readers' calls: requests are marshalled
// as usual, and of a ListAuditEventsResponse only what a reader needs is
// read (into a pageScan): the events' types, checked, and the next page
// token. Decoding all of a page costs the load generator, which shares
// the CPUs with stage4, more than the whole page cost stage4 to make
// (Struct details are many small messages); a reader elsewhere would pay
// that on its own machine.
type pageCodec struct{}

// Name is the content subtype of the calls: they are ordinary protobuf
// on the wire.
func (pageCodec) Name() string { return "proto" }

func (pageCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("marshal %T: not a proto message", v)
	}
	return proto.Marshal(m)
}

func (pageCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*pageScan)
	if !ok {
		return fmt.Errorf("unmarshal into %T: the readers' codec reads pages only", v)
	}
	return p.scan(data)
}

// pageScan is what a reader takes from a page.
type pageScan struct {
	want   stage4v1.AuditEventType
	events int
	next   string
}

// Field numbers of ListAuditEventsResponse and AuditEvent.
const (
	fieldAuditEvents   = 1
	fieldNextPageToken = 2
	fieldEventType     = 3
)

// scan reads a ListAuditEventsResponse, counting its events, each of which
// must be of the listed type.
func (p *pageScan) scan(b []byte) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == fieldAuditEvents && typ == protowire.BytesType:
			ev, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			t, err := eventType(ev)
			if err != nil {
				return err
			}
			if t != p.want {
				return fmt.Errorf("listed %v, got an event of type %v", p.want, t)
			}
			p.events++
			b = b[n:]
		case num == fieldNextPageToken && typ == protowire.BytesType:
			s, n := protowire.ConsumeString(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			p.next = s
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return nil
}

// eventType reads the type of an encoded AuditEvent.
func eventType(b []byte) (stage4v1.AuditEventType, error) {
	t := stage4v1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return t, protowire.ParseError(n)
		}
		b = b[n:]
		if num == fieldEventType && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return t, protowire.ParseError(n)
			}
			t = stage4v1.AuditEventType(v)
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return t, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return t, nil
}

// summarize fills Summary and the ratios from Rounds.
func (r *readersResult) summarize() {
	pick := func(c string) []readRound {
		var out []readRound
		for _, x := range r.Rounds {
			if x.Config == c {
				out = append(out, x)
			}
		}
		return out
	}
	cores := func(role string) func(readRound) float64 {
		return func(x readRound) float64 { return x.Exec.CPU[role] / x.Exec.Elapsed }
	}
	for _, c := range readConfigs {
		rs := pick(c)
		if len(rs) == 0 {
			continue
		}
		row := readSummaryRow{
			Config:       c,
			RPS:          statOf(rs, func(x readRound) float64 { return x.Exec.RPS }),
			P50:          statOf(rs, func(x readRound) float64 { return x.Exec.P50 }),
			P99:          statOf(rs, func(x readRound) float64 { return x.Exec.P99 }),
			GatewayCores: statOf(rs, cores(roleGateway)),
			LoadgenCores: statOf(rs, cores(roleLoadgen)),
		}
		for _, x := range rs {
			row.Errors += x.Exec.Errors
		}
		if rs[0].Readers != nil {
			of := func(f func(*readerSample) float64) *stat {
				s := statOf(rs, func(x readRound) float64 { return f(x.Readers) })
				return &s
			}
			row.RecordsPerSec = of(func(s *readerSample) float64 { return s.RecordsPerSec })
			row.OKPerSec = of(func(s *readerSample) float64 { return s.OKPerSec })
			row.RefusedPerSec = of(func(s *readerSample) float64 { return s.RefusedPerSec })
			row.ReadP50 = of(func(s *readerSample) float64 { return s.P50 })
			row.ReadP99 = of(func(s *readerSample) float64 { return s.P99 })
			for _, x := range rs {
				row.ReadOther += x.Readers.Other
			}
		}
		r.Summary = append(r.Summary, row)
	}
	none, limited, off := pick(cfgReadNone), pick(cfgReadLimited), pick(cfgReadOff)
	if len(none) == 0 || len(none) != len(limited) || len(limited) != len(off) {
		return
	}
	var lr, or []float64
	for i := range none {
		lr = append(lr, limited[i].Exec.RPS/none[i].Exec.RPS)
		or = append(or, off[i].Exec.RPS/none[i].Exec.RPS)
	}
	r.RatioLimited, r.RatioOff = newStat(lr), newStat(or)
}
