package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// burstConfig holds the flags of "stage4load burst".
type burstConfig struct {
	stage4Bin  string
	stage4Args []string
	calls      int
	conns      int
	bytes      int
	shape      string
	settle     time.Duration
	workDir    string
}

// burstResult is what one burst measured.
type burstResult struct {
	Shape        string
	Calls        int
	RequestBytes int
	Codes        map[string]int
	Elapsed      time.Duration
	StartRSSKiB  int64
	PeakRSSKiB   int64 // VmHWM: the kernel's own high-water mark
	AfterRSSKiB  int64 // VmRSS once settle has passed after the burst
}

const burstUsage = `Usage: stage4load burst [flags]

Starts the reference Stage-3 and "stage4 serve" on 127.0.0.1, sends --calls
ExecutePlan requests of --bytes each at once, and reports stage4's resident
set before, at its peak (VmHWM) and --settle after the burst. Every request is
larger than a valid plan may be, so each is refused after it has been read and
decoded: what is measured is what a flood of maximum-size requests costs.
`

// parseBurstConfig reads the flags of "stage4load burst".
func parseBurstConfig(args []string, stderr io.Writer) (burstConfig, error) {
	var c burstConfig
	fs := flag.NewFlagSet("stage4load burst", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, burstUsage); fs.PrintDefaults() }
	fs.StringVar(&c.stage4Bin, "stage4-bin", "bin/stage4", "the stage4 binary")
	fs.Func("stage4-arg", "an extra argument for \"stage4 serve\" (repeatable)", func(s string) error {
		c.stage4Args = append(c.stage4Args, s)
		return nil
	})
	fs.IntVar(&c.calls, "calls", 200, "concurrent requests")
	fs.IntVar(&c.conns, "conns", 200, "client connections the calls are spread over")
	fs.IntVar(&c.bytes, "bytes", 4<<20, "encoded size of each request")
	fs.StringVar(&c.shape, "shape", "string", "what fills the request: string (one long parameter) or values (many small list values)")
	fs.DurationVar(&c.settle, "settle", 5*time.Second, "how long after the burst to read the resident set again")
	fs.StringVar(&c.workDir, "work-dir", "", "keep logs and the audit log here instead of a removed temp dir")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.calls < 1 || c.conns < 1 || c.bytes < 1024 {
		return c, errors.New("need --calls and --conns of at least 1 and --bytes of at least 1024")
	}
	return c, nil
}

// runBurstCommand is "stage4load burst".
func runBurstCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseBurstConfig(args, stderr)
	if err != nil {
		return err
	}
	req, err := burstRequest(cfg.shape, cfg.bytes)
	if err != nil {
		return err
	}
	dir := cfg.workDir
	if dir == "" {
		dir, err = os.MkdirTemp("", "stage4load-burst-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	s3Addr, err1 := freeAddr()
	s4Addr, err2 := freeAddr()
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	s3, err := spawn("reference stage3", s3Addr, filepath.Join(dir, "stage3.log"),
		cfg.stage4Bin, "reference-stage3", "--listen", s3Addr, "--log-level", "warn")
	if err != nil {
		return err
	}
	defer s3.stop()
	s4args := append([]string{"serve", "--listen", s4Addr, "--metrics-listen", "", "--stage3-addr", s3Addr,
		"--stage3-insecure", "--audit-log", filepath.Join(dir, "audit"), "--log-level", "warn"}, cfg.stage4Args...)
	s4, err := spawn("stage4", s4Addr, filepath.Join(dir, "stage4.log"), cfg.stage4Bin, s4args...)
	if err != nil {
		return err
	}
	defer s4.stop()

	res, err := burst(ctx, s4Addr, s4.pid(), req, cfg)
	if err != nil {
		return err
	}
	if err := s4.alive(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "shape %s, %d calls of %d bytes over %d connections in %v; codes %v\n",
		res.Shape, res.Calls, res.RequestBytes, cfg.conns, res.Elapsed.Round(time.Millisecond), res.Codes)
	fmt.Fprintf(stdout, "stage4 RSS MiB: start %.1f, peak %.1f, %v after %.1f\n",
		mib(res.StartRSSKiB), mib(res.PeakRSSKiB), cfg.settle, mib(res.AfterRSSKiB))
	return nil
}

// burst sends cfg.calls copies of req at once to addr over cfg.conns
// connections and reads the resident set of process pid around it.
func burst(ctx context.Context, addr string, pid int, req *stage4v1.ExecutePlanRequest, cfg burstConfig) (burstResult, error) {
	res := burstResult{Shape: cfg.shape, Calls: cfg.calls, RequestBytes: proto.Size(req), Codes: map[string]int{}}
	clients := make([]stage4v1.Stage4ServiceClient, cfg.conns)
	for i := range clients {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(res.RequestBytes+1024)))
		if err != nil {
			return res, err
		}
		defer conn.Close()
		conn.Connect()
		clients[i] = stage4v1.NewStage4ServiceClient(conn)
	}
	var err error
	if res.StartRSSKiB, err = rssKiB(pid); err != nil {
		return res, err
	}
	// Every worker waits at the gate so that the calls start together.
	gate := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range cfg.calls {
		wg.Go(func() {
			<-gate
			callCtx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			_, err := clients[i%len(clients)].ExecutePlan(callCtx, req)
			mu.Lock()
			res.Codes[status.Code(err).String()]++
			mu.Unlock()
		})
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	res.Elapsed = time.Since(start)
	if res.PeakRSSKiB, err = peakRSSKiB(pid); err != nil {
		return res, err
	}
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(cfg.settle):
	}
	res.AfterRSSKiB, err = rssKiB(pid)
	return res, err
}

// burstRequest builds an ExecutePlan request of about size bytes whose bulk
// is shape: one long string parameter, or many small list values (the
// larger decoded form per wire byte).
func burstRequest(shape string, size int) (*stage4v1.ExecutePlanRequest, error) {
	params := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	req := &stage4v1.ExecutePlanRequest{Plan: &stage4v1.Plan{
		UserId: benchUser, TokenHash: benchToken, TriggerType: "manual",
		Steps: []*stage4v1.Step{{Domain: "text", Method: "upper", Parameters: params}},
	}}
	// Every enclosing length prefix grows with the bulk; 32 bytes cover
	// them.
	overhead := proto.Size(req) + 32
	switch shape {
	case "string":
		params.Fields["text"] = structpb.NewStringValue(strings.Repeat("x", size-overhead))
	case "values":
		// One null value takes 4 bytes in a list: tag and length of the
		// element, tag and value of null_value.
		n := (size - overhead) / 4
		vals := make([]*structpb.Value, n)
		for i := range vals {
			vals[i] = structpb.NewNullValue()
		}
		params.Fields["v"] = structpb.NewListValue(&structpb.ListValue{Values: vals})
	default:
		return nil, fmt.Errorf("--shape %q: want string or values", shape)
	}
	if n := proto.Size(req); n > size {
		return nil, fmt.Errorf("request is %d bytes, over %d", n, size)
	}
	return req, nil
}
