package filestore_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

const (
	received  = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED
	started   = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED
	completed = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED
	failed    = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED
)

func TestAppendAssignsChainAndMatchesFile(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg := openLog(t, path)
	before := time.Now()
	var written []*stage4v1.AuditEvent
	for _, typ := range []stage4v1.AuditEventType{received, started, completed} {
		ev, err := lg.Append(context.Background(), event(typ, "e1", "alice"))
		require.NoError(t, err)
		written = append(written, ev)
	}
	require.Equal(t, audit.GenesisHash, written[0].GetPreviousHash())
	for i, ev := range written {
		require.Equal(t, uint64(i+1), ev.GetSequence())
		require.Regexp(t, `^sha256:[0-9a-f]{64}$`, ev.GetHash())
		require.False(t, ev.GetTime().AsTime().Before(before.Truncate(time.Microsecond)))
		if i > 0 {
			require.Equal(t, written[i-1].GetHash(), ev.GetPreviousHash())
		}
	}
	requireEvents(t, written, listAll(t, lg, &stage4v1.ListAuditEventsRequest{}))

	res, err := filestore.Verify(path)
	require.NoError(t, err)
	require.Equal(t, uint64(3), res.Records)
	require.Equal(t, written[2].GetHash(), res.LastHash)
}

func TestAppendRefusesBadEventsWithoutFailingTheLog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ev   *stage4v1.AuditEvent
	}{
		{name: "unspecified type", ev: event(stage4v1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED, "e", "u")},
		{name: "undefined type", ev: event(99, "e", "u")},
		{name: "invalid UTF-8", ev: event(received, "e\xff", "u")},
		{name: "NaN in details", ev: &stage4v1.AuditEvent{Type: received, Details: &structpb.Struct{Fields: map[string]*structpb.Value{
			"x": structpb.NewNumberValue(math.NaN()),
		}}}},
		{name: "value without kind", ev: &stage4v1.AuditEvent{Type: received, Details: &structpb.Struct{Fields: map[string]*structpb.Value{
			"x": {},
		}}}},
		{name: "larger than a record", ev: event(received, strings.Repeat("x", audit.MaxRecordBytes), "u")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			lg := openLog(t, path)
			_, err := lg.Append(context.Background(), tt.ev)
			require.Error(t, err)
			require.NoError(t, lg.Err())
			mustAppend(t, lg, event(received, "e", "u"))
			res, err := filestore.Verify(path)
			require.NoError(t, err)
			require.Equal(t, uint64(1), res.Records)
		})
	}
}

func TestAppendEncodesDetailsAsJSON(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg := openLog(t, path)
	details, err := structpb.NewStruct(map[string]any{
		"quote": `say "hi"\now`, "ctl": "a\x00b\tc\u2028", "num": 1234567.5, "tiny": 1e-9, "neg": -3,
		"list": []any{true, nil, "x", map[string]any{"k": 1e21}}, "empty": map[string]any{},
	})
	require.NoError(t, err)
	ev := &stage4v1.AuditEvent{Type: received, ExecutionId: "é\"x", Details: details}
	mustAppend(t, lg, ev)
	got := listAll(t, lg, &stage4v1.ListAuditEventsRequest{})
	require.Len(t, got, 1)
	require.True(t, proto.Equal(details, got[0].GetDetails()), "details changed: %v", got[0].GetDetails())
	require.Equal(t, ev.GetExecutionId(), got[0].GetExecutionId())
	line := readLines(t, path)[0]
	require.Contains(t, string(line), `"num":1234567.5`)
	require.Contains(t, string(line), `"ctl":"a\u0000b\u0009c`+"\u2028"+`"`)
}

func TestAppendAfterCloseAndCancel(t *testing.T) {
	t.Parallel()
	lg := openLog(t, logPath(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := lg.Append(ctx, event(received, "e", "u"))
	require.ErrorIs(t, err, context.Canceled)

	require.NoError(t, lg.Close())
	require.NoError(t, lg.Close())
	_, err = lg.Append(context.Background(), event(received, "e", "u"))
	require.ErrorIs(t, err, audit.ErrClosed)
}

func TestConcurrentAppendsFormOneChain(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg := openLog(t, path)
	const writers, each = 32, 20
	var wg sync.WaitGroup
	seqs := make(chan uint64, writers*each)
	for w := range writers {
		wg.Go(func() {
			for range each {
				ev, err := lg.Append(context.Background(), event(received, "e", "u"+string(rune('a'+w%26))))
				if err != nil {
					t.Error(err)
					return
				}
				seqs <- ev.GetSequence()
			}
		})
	}
	wg.Wait()
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		require.False(t, seen[s], "sequence %d twice", s)
		seen[s] = true
	}
	for s := uint64(1); s <= writers*each; s++ {
		require.True(t, seen[s], "sequence %d missing", s)
	}
	res, err := filestore.Verify(path)
	require.NoError(t, err)
	require.Equal(t, uint64(writers*each), res.Records)
}

func TestReopenContinuesTheChain(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg, err := open(path)
	require.NoError(t, err)
	mustAppend(t, lg, event(received, "e1", "u"), event(failed, "e1", "u"))
	require.NoError(t, lg.Close())

	lg = openLog(t, path)
	require.Equal(t, recovery{}, lg.Recovery())
	ev, err := lg.Append(context.Background(), event(received, "e2", "u"))
	require.NoError(t, err)
	require.Equal(t, uint64(3), ev.GetSequence())
	res, err := filestore.Verify(path)
	require.NoError(t, err)
	require.Equal(t, uint64(3), res.Records)
}

func TestFailedLogStaysFailed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                     string
		failRecordAt, failSyncAt int32
	}{
		{name: "first write", failRecordAt: 1},
		{name: "second write", failRecordAt: 2},
		{name: "first fsync", failSyncAt: 1},
		{name: "third fsync", failSyncAt: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var ff *testkit.FaultyFile
			var notified []error
			reg := prometheus.NewRegistry()
			lg := openLog(t, logPath(t),
				audit.WithRegisterer(reg),
				audit.WithHealthFunc(func(err error) { notified = append(notified, err) }),
				filestore.WithFileWrapper(func(f filestore.File) filestore.File {
					ff = &testkit.FaultyFile{File: f, FailRecordAt: tt.failRecordAt, FailSyncAt: tt.failSyncAt}
					return ff
				}))
			okAppends := max(tt.failRecordAt, tt.failSyncAt) - 1
			for range okAppends {
				mustAppend(t, lg, event(received, "e", "u"))
			}
			require.NoError(t, lg.Err())
			_, err := lg.Append(context.Background(), event(received, "e", "u"))
			require.ErrorIs(t, err, testkit.ErrInjected)
			require.ErrorIs(t, lg.Err(), testkit.ErrInjected)
			writes, syncs := ff.Writes.Load(), ff.Syncs.Load()
			for range 3 {
				_, err := lg.Append(context.Background(), event(received, "e", "u"))
				require.ErrorIs(t, err, testkit.ErrInjected)
			}
			require.Equal(t, writes, ff.Writes.Load(), "a failed log must not write again")
			require.Equal(t, syncs, ff.Syncs.Load(), "a failed log must never retry fsync")
			require.Len(t, notified, 1)
			require.ErrorIs(t, notified[0], testkit.ErrInjected)
			require.Equal(t, float64(okAppends), metricValue(t, reg, "stage4_audit_appends_total"))
			require.Equal(t, float64(4), metricValue(t, reg, "stage4_audit_append_failures_total"))
		})
	}
}

// readOnlyWriter sends writes to a descriptor opened read-only, so the
// kernel itself refuses them (EBADF), even for root.
type readOnlyWriter struct {
	filestore.File
	ro *os.File
}

func (r readOnlyWriter) Write(p []byte) (int, error) { return r.ro.Write(p) }

func TestRealWriteErrorFailsTheLog(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	ro, err := os.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { ro.Close() })
	lg := openLog(t, path, filestore.WithFileWrapper(func(f filestore.File) filestore.File { return readOnlyWriter{File: f, ro: ro} }))
	_, err = lg.Append(context.Background(), event(received, "e", "u"))
	require.Error(t, err)
	require.Error(t, lg.Err())
}

func TestOpenRefusesUnwritablePlaces(t *testing.T) {
	t.Parallel()
	if os.Geteuid() == 0 {
		t.Skip("root ignores file permissions")
	}
	tests := []struct {
		name string
		path func(t *testing.T) string
	}{
		{name: "read-only file", path: func(t *testing.T) string {
			p := logPath(t)
			require.NoError(t, os.WriteFile(p, nil, 0o400))
			return p
		}},
		{name: "read-only directory", path: func(t *testing.T) string {
			dir := t.TempDir()
			require.NoError(t, os.Chmod(dir, 0o500))
			t.Cleanup(func() { os.Chmod(dir, 0o700) })
			return filepath.Join(dir, "audit.jsonl")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := open(tt.path(t))
			require.ErrorIs(t, err, os.ErrPermission)
		})
	}
}

func TestOpenRecoversFromACrash(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg, err := open(path)
	require.NoError(t, err)
	mustAppend(t, lg,
		event(received, "done", "u1"), event(started, "done", "u1"), event(completed, "done", "u1"),
		event(received, "only-received", "u2"),
		event(received, "cut", "u3"), event(started, "cut", "u3"),
	)
	require.NoError(t, lg.Close())
	// The crash wrote only part of the next record, which was therefore
	// never acknowledged (nor named by the head file).
	const cutInside = 25
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"sequence":7,"time":"2026-11-25T18:11:15.124625893Z"`[:cutInside])
	require.NoError(t, err)
	require.NoError(t, f.Close())

	res, err := filestore.Verify(path)
	require.NoError(t, err, "an incomplete last line is a crash trace, not damage")
	require.Equal(t, uint64(6), res.Records)
	require.Equal(t, int64(cutInside), res.TrailingBytes)

	lg = openLog(t, path)
	require.Equal(t, recovery{TruncatedBytes: cutInside, Interrupted: []string{"only-received", "cut"}}, lg.Recovery())
	res, err = filestore.Verify(path)
	require.NoError(t, err)
	require.Equal(t, uint64(8), res.Records)
	require.Zero(t, res.TrailingBytes)

	got := listAll(t, lg, &stage4v1.ListAuditEventsRequest{Type: failed})
	require.Len(t, got, 2)
	for i, want := range []struct{ id, user, last string }{
		{"only-received", "u2", received.String()},
		{"cut", "u3", started.String()},
	} {
		require.Equal(t, want.id, got[i].GetExecutionId())
		require.Equal(t, want.user, got[i].GetUserId())
		require.Equal(t, "sha256:plan-of-"+want.user, got[i].GetPlanId())
		require.Equal(t, audit.PhaseInterrupted, got[i].GetDetails().GetFields()["phase"].GetStringValue())
		require.Equal(t, want.last, got[i].GetDetails().GetFields()["last_event_type"].GetStringValue())
	}

	// A second start finds nothing left to repair.
	require.NoError(t, lg.Close())
	lg = openLog(t, path)
	require.Equal(t, recovery{}, lg.Recovery())
}

func TestTamperingIsDetected(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		tamper func(lines [][]byte) [][]byte // lines[2] is sequence 3
		reason string
		badSeq uint64
	}{
		{name: "one byte changed in a value", reason: "hash mismatch", badSeq: 3, tamper: func(l [][]byte) [][]byte {
			l[2] = bytes.Replace(l[2], []byte(`"user_id":"mallory"`), []byte(`"user_id":"mallorz"`), 1)
			return l
		}},
		{name: "hash rewritten to match", reason: "previous_hash", badSeq: 4, tamper: func(l [][]byte) [][]byte {
			// Re-hashing a changed record breaks the link from the next one.
			l[2] = rehash(bytes.Replace(l[2], []byte("mallory"), []byte("mallorz"), 1))
			return l
		}},
		{name: "line deleted", reason: "sequence gap", badSeq: 3, tamper: func(l [][]byte) [][]byte {
			return append(l[:2:2], l[3:]...)
		}},
		{name: "lines swapped", reason: "sequence gap", badSeq: 3, tamper: func(l [][]byte) [][]byte {
			l[2], l[3] = l[3], l[2]
			return l
		}},
		{name: "line made unparsable", reason: "unparsable line", badSeq: 3, tamper: func(l [][]byte) [][]byte {
			l[2] = []byte("{not json}\n")
			return l
		}},
		{name: "valid JSON with a rewritten hash member", reason: "unparsable line", badSeq: 3, tamper: func(l [][]byte) [][]byte {
			l[2] = bytes.Replace(l[2], []byte(`,"hash":"sha256:`), []byte(`,"hash":"SHA256:`), 1)
			return l
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := logPath(t)
			lg, err := open(path)
			require.NoError(t, err)
			for i := range 5 {
				mustAppend(t, lg, event(received, "e"+string(rune('0'+i)), "mallory"))
			}
			require.NoError(t, lg.Close())
			require.NoError(t, os.WriteFile(path, bytes.Join(tt.tamper(readLines(t, path)), nil), 0o600))

			res, err := filestore.Verify(path)
			var ce *audit.ChainError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tt.badSeq, ce.Sequence)
			require.Contains(t, ce.Reason, tt.reason)
			require.Equal(t, tt.badSeq-1, res.Records)

			_, err = open(path)
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tt.badSeq, ce.Sequence)
			require.ErrorContains(t, err, fmt.Sprintf("sequence %d", tt.badSeq))
		})
	}
}

// rehash recomputes a line's hash member, as a forger would.
func rehash(line []byte) []byte {
	i := bytes.LastIndex(line, []byte(`,"hash":`))
	body := append(bytes.Clone(line[:i]), '}')
	sum := sha256Hex(body)
	return append(append(bytes.Clone(line[:i]), `,"hash":"sha256:`+sum+`"}`...), '\n')
}

func TestVerifyReportsProgress(t *testing.T) {
	t.Parallel()
	path := logPath(t)
	lg := openLog(t, path)
	big := strings.Repeat("x", 200<<10)
	for range 12 {
		ev := event(received, "e", "u")
		ev.Details.Fields["pad"] = structpb.NewStringValue(big)
		mustAppend(t, lg, ev)
	}
	var seen []int64
	res, err := filestore.Verify(path, audit.WithProgress(func(n int64) { seen = append(seen, n) }))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(seen), 3)
	require.IsNonDecreasing(t, seen)
	require.Equal(t, res.Bytes, seen[len(seen)-1])
}

func TestVerifyRefusesOverlongLines(t *testing.T) {
	t.Parallel()
	_, err := audit.Verify(strings.NewReader(strings.Repeat("x", audit.MaxRecordBytes+10) + "\n"))
	var ce *audit.ChainError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, uint64(1), ce.Sequence)
}

func TestMetricsAreRegistered(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	lg := openLog(t, logPath(t), audit.WithRegisterer(reg))
	mustAppend(t, lg, event(received, "e", "u"), event(failed, "e", "u"))
	require.Equal(t, float64(2), metricValue(t, reg, "stage4_audit_appends_total"))
	require.Equal(t, uint64(2), histogramCount(t, reg, "stage4_audit_commit_duration_seconds"))
	require.Equal(t, uint64(2), histogramCount(t, reg, "stage4_audit_batch_size"))

	_, err := open(logPath(t), audit.WithRegisterer(reg))
	require.Error(t, err, "a second log on the same registry must not hide its metrics")
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return gather(t, reg, name).GetCounter().GetValue()
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	return gather(t, reg, name).GetHistogram().GetSampleCount()
}

func gather(t *testing.T, reg *prometheus.Registry, name string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0]
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}
