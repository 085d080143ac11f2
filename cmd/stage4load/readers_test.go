package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// startReadGateway runs a gateway in this process on the log in dir, as
// stage4 serve --audit-readers '*' would, with cfg's limits on audit
// reads, and returns a target on it with n reader connections.
func startReadGateway(t *testing.T, stage3Addr, dir string, cfg gateway.Config, n int) readTarget {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	cfg.AuditLog = dir
	cfg.AuditReaders = authz.Everyone()
	cfg.Stage3 = stage3client.Config{Target: stage3Addr, Insecure: true}
	cfg.MaxMessageBytes = stage3client.DefaultMaxMessageBytes
	cfg.ShutdownGrace = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan gateway.Addrs, 1)
	go func() {
		done <- gateway.Run(ctx, cfg, slog.New(slog.DiscardHandler), func(a gateway.Addrs) { ready <- a })
	}()
	var addr string
	select {
	case a := <-ready:
		addr = a.GRPC.String()
	case err := <-done:
		cancel()
		t.Fatalf("gateway ended before it was ready: %v", err)
	case <-time.After(time.Minute):
		cancel()
		t.Fatal("gateway not ready in a minute")
	}
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	tg := readTarget{exec: stage4v1.NewStage4ServiceClient(dial(t, addr)), pid: os.Getpid()}
	for range n {
		tg.readers = append(tg.readers, dial(t, addr))
	}
	return tg
}

// TestMeasureReaders runs the readers measurement with a tiny log and
// short durations against two gateways in this process (the binary's
// wiring, gateway.Run): one whose readers may take almost no time, so that
// they are refused, and one with limitsOff's limits. This process stands
// in for every watched PID.
func TestMeasureReaders(t *testing.T) {
	ref := startStage3(t, stage3ref.DefaultTokens())
	dir := t.TempDir()
	limitedDir, offDir := filepath.Join(dir, readLogLimited), filepath.Join(dir, readLogOff)
	log, err := fillLog(t.Context(), limitedDir, 3000, 0, 0, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, 3000, log.events)
	require.Positive(t, log.bytes)
	// The gateway refuses a log whose key others may read: the copy keeps
	// the permissions.
	require.NoError(t, copyDir(offDir, limitedDir))

	cfg := readConfig{
		records: log.events, readers: 3, callers: 2, rounds: 2,
		warmup: 50 * time.Millisecond, measure: 500 * time.Millisecond,
		eventType: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED, pageSize: 100,
		// Once one read has taken a millisecond, readers with the share
		// below are back under it ten seconds later: a read's turn would
		// come after this deadline.
		deadline: 2 * time.Second,
	}
	e := readEnv{
		limited: startReadGateway(t, ref.Addr, limitedDir, gateway.Config{MaxConcurrentAuditReads: cfg.readers, AuditReadShare: 0.0001}, cfg.readers),
		off: startReadGateway(t, ref.Addr, offDir, gateway.Config{MaxConcurrentAuditReads: 64, AuditReadShare: 64,
			AuditReadMaxScanned: 1_000_000_000}, cfg.readers),
		stage3PID: os.Getpid(),
	}
	var progress bytes.Buffer
	res, err := measureReaders(t.Context(), e, cfg, &progress)
	require.NoError(t, err)
	res.Records, res.LogBytes = log.events, log.bytes

	require.Len(t, res.Rounds, 2*len(readConfigs))
	var refused, offRecords int
	for _, r := range res.Rounds {
		require.Positive(t, r.Exec.Requests, "%s", r.Config)
		require.Zero(t, r.Exec.Errors, "%s: %s", r.Config, r.Exec.FirstError)
		if r.Config == cfgReadNone {
			require.Nil(t, r.Readers)
			continue
		}
		require.NotNil(t, r.Readers, r.Config)
		require.Zero(t, r.Readers.Other, "%s: %s", r.Config, r.Readers.FirstOther)
		switch r.Config {
		case cfgReadLimited:
			refused += r.Readers.Refused
		case cfgReadOff:
			require.Zero(t, r.Readers.Refused, "nothing is refused without limits")
			offRecords += r.Readers.Records
		}
	}
	require.Positive(t, refused, "readers over their share are refused with RESOURCE_EXHAUSTED")
	require.Positive(t, offRecords, "readers without limits read")
	require.Len(t, res.Summary, len(readConfigs))
	require.Nil(t, res.Summary[0].RecordsPerSec)
	require.NotNil(t, res.Summary[2].RecordsPerSec)
	require.Positive(t, res.RatioLimited.Median)
	require.Positive(t, res.RatioOff.Median)
	require.Contains(t, progress.String(), "(b') readers, limits off")

	var md bytes.Buffer
	writeReadersMarkdown(&md, res)
	require.Contains(t, md.String(), "## Audit readers")
	require.Contains(t, md.String(), "list type PLAN_RECEIVED by pages of 100")
	require.Contains(t, res.target().Target, "with 3 readers listing PLAN_RECEIVED by page of 100")

	// The benchmark's report and JSON carry it.
	out := filepath.Join(dir, "out")
	bcfg := config{out: filepath.Join(out, "PERFORMANCE.md"), jsonOut: filepath.Join(out, "performance.json")}
	require.NoError(t, writeOutputs(&results{Readers: res, Targets: []targetCheck{res.target()}}, bcfg, &bytes.Buffer{}))
	report, err := os.ReadFile(bcfg.out)
	require.NoError(t, err)
	require.Contains(t, string(report), "## Audit readers")
	var back results
	b, err := os.ReadFile(bcfg.jsonOut)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &back))
	require.NotNil(t, back.Readers)
	require.Equal(t, res.RatioLimited, back.Readers.RatioLimited)
}

func TestPageScan(t *testing.T) {
	t.Parallel()
	failed := stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED
	event := func(typ stage4v1.AuditEventType) *stage4v1.AuditEvent {
		return &stage4v1.AuditEvent{Sequence: 7, Type: typ, ExecutionId: "e", Hash: "h"}
	}
	page := func(next string, evs ...*stage4v1.AuditEvent) []byte {
		b, err := proto.Marshal(&stage4v1.ListAuditEventsResponse{AuditEvents: evs, NextPageToken: next})
		require.NoError(t, err)
		return b
	}
	tests := []struct {
		name       string
		data       []byte
		wantEvents int
		wantNext   string
		wantErr    string
	}{
		{name: "a page and the next", data: page("tok", event(failed), event(failed)), wantEvents: 2, wantNext: "tok"},
		{name: "the last page", data: page("", event(failed)), wantEvents: 1},
		{name: "empty", data: nil},
		{name: "another type", data: page("", event(failed), event(stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED)),
			wantErr: "got an event of type AUDIT_EVENT_TYPE_PLAN_RECEIVED"},
		{name: "cut short", data: page("tok", event(failed))[:5], wantErr: "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := &pageScan{want: failed}
			err := pageCodec{}.Unmarshal(tt.data, p)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantEvents, p.events)
			require.Equal(t, tt.wantNext, p.next)
		})
	}
	// Requests are ordinary protobuf.
	req := &stage4v1.ListAuditEventsRequest{PageSize: 1000, Type: failed, PageToken: "tok"}
	b, err := pageCodec{}.Marshal(req)
	require.NoError(t, err)
	back := &stage4v1.ListAuditEventsRequest{}
	require.NoError(t, proto.Unmarshal(b, back))
	require.True(t, proto.Equal(req, back))
}

func TestReadersFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		prefix   string
		args     []string
		wantType stage4v1.AuditEventType
		wantErr  string
	}{
		{name: "defaults", wantType: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED},
		{name: "short type name", args: []string{"--type", "EXECUTION_FAILED"}, wantType: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED},
		{name: "full type name", prefix: "readers-", args: []string{"--readers-type", "AUDIT_EVENT_TYPE_EXECUTION_COMPLETED"},
			wantType: stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED},
		{name: "unspecified", args: []string{"--type", "UNSPECIFIED"}, wantErr: "not an audit event type"},
		{name: "unknown", args: []string{"--type", "EXECUTION_LOST"}, wantErr: "not an audit event type"},
		{name: "page too large", args: []string{"--page-size", "1001"}, wantErr: "page size of 1 to 1000"},
		{name: "no readers", prefix: "readers-", args: []string{"--readers", "0"}, wantErr: "at least 1 reader"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var c readConfig
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(&bytes.Buffer{})
			c.flags(fs, tt.prefix, 300)
			err := fs.Parse(tt.args)
			if err == nil {
				err = c.check()
			}
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantType, c.eventType)
			require.Equal(t, 8, c.readers)
			require.Equal(t, 16, c.callers)
			require.Equal(t, 1000, c.pageSize)
		})
	}

	// The benchmark leaves the measurement out unless asked, and checks
	// it when asked.
	c, err := parseConfig(nil, &bytes.Buffer{})
	require.NoError(t, err)
	require.Zero(t, c.readers.records)
	c, err = parseConfig([]string{"--readers-records", "300000", "--readers-duration", "2s"}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, 300000, c.readers.records)
	require.Equal(t, 2*time.Second, c.readers.measure)
	_, err = parseConfig([]string{"--readers-records", "3", "--readers-page-size", "0"}, &bytes.Buffer{})
	require.ErrorContains(t, err, "page size")
	require.ErrorContains(t, runReadersCommand(t.Context(), []string{"--records", "0"}, &bytes.Buffer{}, &bytes.Buffer{}), "--records")
}
