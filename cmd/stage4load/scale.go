package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// The scale commands measure the file store at a year's scale (issue 11):
// "fill" writes a log of many executions straight through the store (a
// gateway would take hours to write 10 GB), "scale" starts stage4 serve on
// it and times the start-up and ListAuditEvents lookups over gRPC.

// Executions of a filled log: execution n has these ids, so that the
// lookups know them without reading the log.
const (
	fillPlans = 1000 // distinct plans
	fillUsers = 100  // distinct users
	// fillFailEvery: every this many executions fails at Stage-3 instead
	// of completing, so that a lookup by type finds rare events.
	fillFailEvery = 100
)

func fillExecutionID(n int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "execution %d", n))
	return hex.EncodeToString(sum[:16])
}

func fillPlanID(n int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "plan %d", n%fillPlans))
	return "hmac-sha256:" + hex.EncodeToString(sum[:])
}

func fillUserID(n int) string { return fmt.Sprintf("user-%03d", n%fillUsers) }

// fillEvents are the three events of execution n, with details of the
// size and shape the gateway writes.
func fillEvents(n int) []audit.Event {
	ev := func(t audit.EventType, d audit.Details) audit.Event {
		return audit.Event{Type: t, ExecutionID: fillExecutionID(n), PlanID: fillPlanID(n), UserID: fillUserID(n), Details: d}
	}
	received := ev(audit.PlanReceived, audit.Details{
		"trigger_type": "user_request", "step_count": 3.0, "binding_count": 2.0,
		"steps":             []any{"crm.lookup_contact", "mail.send_template", "calendar.create_event"},
		"token_fingerprint": fmt.Sprintf("hmac-sha256:%016x", n),
		"peer":              fmt.Sprintf("10.0.%d.%d:%d", n%256, n/256%256, 40000+n%20000),
	})
	startedEv := ev(audit.ExecutionStarted, audit.Details{"stage3_deadline_ms": 30000.0})
	var last audit.Event
	if n%fillFailEvery == fillFailEvery-1 {
		last = ev(audit.ExecutionFailed, audit.Details{"phase": "stage3", "code": "FAILED_PRECONDITION", "reason": "STAGE3_REJECTED"})
	} else {
		last = ev(audit.ExecutionCompleted, audit.Details{"step_count": 3.0, "stage3_latency_ms": float64(n%5000) / 100})
	}
	return []audit.Event{received, startedEv, last}
}

// runFill is "stage4load fill".
func runFill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stage4load fill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("audit-log", "", "log directory to create")
	events := fs.Int("events", 0, "events to write (a multiple of 3: executions of three events)")
	bytes := fs.Int64("bytes", 0, "write executions until the log holds at least this many bytes (instead of --events)")
	segBytes := fs.Int64("segment-bytes", segstore.DefaultSegmentBytes, "segment size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || (*events <= 0) == (*bytes <= 0) || fs.NArg() > 0 {
		return errors.New("fill: want --audit-log and one of --events or --bytes")
	}
	st, err := fillLog(ctx, *dir, *events, *bytes, *segBytes, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "filled %s: %d events (%d executions), %d bytes of records, in %v\n",
		*dir, st.events, st.events/3, st.bytes, st.took.Round(time.Second))
	return nil
}

// filled is what fillLog wrote.
type filled struct {
	events int   // a multiple of 3
	bytes  int64 // of records
	took   time.Duration
}

// fillLog writes a new log in dir, which must not exist, through the
// store: executions of three events until it holds at least events of
// them or at least bytes of records (one of the two is 0), reporting
// progress on progress.
func fillLog(ctx context.Context, dir string, events int, bytes, segBytes int64, progress io.Writer) (filled, error) {
	if _, err := os.Stat(dir); err == nil {
		return filled{}, fmt.Errorf("fill: %s exists: fill writes a new log", dir)
	}
	store, _, err := audit.Open(ctx, dir, audit.OpenConfig{SegmentBytes: segBytes})
	if err != nil {
		return filled{}, err
	}
	start := time.Now()
	written := int64(0)
	// Batches of 64 executions, one sync per batch: a gateway under load
	// batches its appends too, and the result is the same log.
	const perBatch = 64
	n := 0
	for done := false; !done; {
		if err := ctx.Err(); err != nil {
			store.Close()
			return filled{}, err
		}
		var evs []audit.Event
		for range perBatch {
			evs = append(evs, fillEvents(n)...)
			n++
			if events > 0 && n*3 >= events {
				break
			}
		}
		err := store.Append(ctx, true, func(h audit.Head) ([]audit.Record, error) {
			recs, err := audit.RenderRecords(h, time.Now(), evs)
			for i := range recs {
				written += int64(len(recs[i].Line)) + 1
			}
			return recs, err
		})
		if err != nil {
			store.Close()
			return filled{}, err
		}
		done = (events > 0 && n*3 >= events) || (bytes > 0 && written >= bytes)
		if n%(perBatch*2000) == 0 {
			fmt.Fprintf(progress, "\rfill: %d events, %d MiB", n*3, written>>20)
		}
	}
	if err := store.Close(); err != nil {
		return filled{}, err
	}
	if n >= perBatch*2000 {
		fmt.Fprintf(progress, "\n")
	}
	return filled{events: n * 3, bytes: written, took: time.Since(start)}, nil
}

// runScale is "stage4load scale".
func runScale(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stage4load scale", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("stage4", "", "path of the stage4 binary")
	dir := fs.String("audit-log", "", "a log written by stage4load fill")
	rounds := fs.Int("rounds", 3, "start-ups to time")
	lookups := fs.Int("lookups", 200, "lookups of each kind")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" || *dir == "" || fs.NArg() > 0 {
		return errors.New("scale: want --stage4 and --audit-log")
	}
	t0 := time.Now()
	executions, size, err := logSize(*dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "log %s: %d events, %.2f GiB of records; stage4 audit verify's check of all of it took %v\n",
		*dir, executions*3, float64(size)/(1<<30), time.Since(t0).Round(time.Millisecond))
	work, err := os.MkdirTemp("", "stage4-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	var startups []time.Duration
	var s4 *child
	var addr string
	for i := range *rounds {
		if addr, err = freeAddr(); err != nil {
			return err
		}
		s3addr, err := freeAddr()
		if err != nil {
			return err
		}
		t0 := time.Now()
		c, err := spawn("stage4", addr, filepath.Join(work, fmt.Sprintf("stage4-%d.log", i)), *bin, "serve",
			"--listen", addr, "--metrics-listen", "", "--stage3-addr", s3addr, "--stage3-insecure",
			"--audit-log", *dir, "--audit-readers", "*", "--log-level", "info")
		if err != nil {
			return err
		}
		if err := waitServing(ctx, addr); err != nil {
			c.stop()
			return err
		}
		startups = append(startups, time.Since(t0))
		if i < *rounds-1 {
			c.stop()
			continue
		}
		s4 = c
	}
	defer s4.stop()
	fmt.Fprintf(stdout, "start-up to SERVING (process start to health SERVING), %d rounds: %s\n", *rounds, durations(startups))
	fmt.Fprintf(stdout, "stage4's own account of the last start-up: %s\n", openLine(s4.logPath))

	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	client := stage4v1.NewStage4ServiceClient(cc)
	rng := rand.New(rand.NewPCG(1, 2))
	kinds := []struct {
		name string
		req  func() *stage4v1.ListAuditEventsRequest
		want func(n int) bool
	}{
		{"execution_id (3 events)", func() *stage4v1.ListAuditEventsRequest {
			return &stage4v1.ListAuditEventsRequest{ExecutionId: fillExecutionID(rng.IntN(executions)), PageSize: 10}
		}, func(n int) bool { return n == 3 }},
		{"plan_id, first page of 100", func() *stage4v1.ListAuditEventsRequest {
			return &stage4v1.ListAuditEventsRequest{PlanId: fillPlanID(rng.IntN(fillPlans)), PageSize: 100}
		}, func(n int) bool { return n > 0 }},
		{"user_id + EXECUTION_FAILED, first page of 100", func() *stage4v1.ListAuditEventsRequest {
			return &stage4v1.ListAuditEventsRequest{UserId: fillUserID(rng.IntN(fillUsers)), PageSize: 100,
				Type: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED}
		}, func(n int) bool { return n >= 0 }},
		{"unknown execution_id (no match)", func() *stage4v1.ListAuditEventsRequest {
			return &stage4v1.ListAuditEventsRequest{ExecutionId: fillExecutionID(executions + rng.IntN(1<<30)), PageSize: 10}
		}, func(n int) bool { return n == 0 }},
		{"no filter, first page of 100", func() *stage4v1.ListAuditEventsRequest {
			return &stage4v1.ListAuditEventsRequest{PageSize: 100}
		}, func(n int) bool { return n == 100 }},
	}
	for _, k := range kinds {
		var lat []time.Duration
		for range *lookups {
			req := k.req()
			t0 := time.Now()
			resp, err := client.ListAuditEvents(ctx, req)
			if err != nil {
				return fmt.Errorf("lookup %s: %w", k.name, err)
			}
			lat = append(lat, time.Since(t0))
			if !k.want(len(resp.GetAuditEvents())) {
				return fmt.Errorf("lookup %s: %d events", k.name, len(resp.GetAuditEvents()))
			}
		}
		fmt.Fprintf(stdout, "ListAuditEvents by %s, %d lookups: %s\n", k.name, *lookups, durations(lat))
	}
	return nil
}

// logSize returns the executions and bytes of records of a filled log, by
// verifying it as audit verify does.
func logSize(path string) (executions int, size int64, err error) {
	d, loc, err := audit.Resolve(path)
	if err != nil {
		return 0, 0, err
	}
	rep, err := d.Verify(context.Background(), loc, audit.VerifyConfig{})
	return int(rep.Result.Records / 3), rep.Result.Bytes, err
}

// waitServing polls the gateway's health until it is SERVING; polling is
// all a foreign process offers, bounded by a minute.
func waitServing(ctx context.Context, addr string) error {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	h := healthpb.NewHealthClient(cc)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: "stage4.v1.Stage4Service"})
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("stage4 on %s not SERVING after a minute", addr)
}

// openLine returns the gateway's log line about opening the audit store.
func openLine(logPath string) string {
	data, _ := os.ReadFile(logPath)
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "audit store") || strings.Contains(l, "audit log opened") {
			return l
		}
	}
	return "(none)"
}

// durations summarises latencies: p50, p99 (nearest rank) and max.
func durations(d []time.Duration) string {
	s := slices.Sorted(slices.Values(d))
	q := func(p float64) time.Duration { return percentile(s, p).Round(time.Microsecond) }
	return fmt.Sprintf("p50 %v, p99 %v, max %v", q(0.5), q(0.99), q(1))
}
