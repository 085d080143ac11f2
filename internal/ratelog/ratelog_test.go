package ratelog_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/internal/ratelog"
)

// line is one record as the tests compare it.
type line struct {
	msg        string
	id         int64 // the "id" attribute: which occurrence was logged
	suppressed int64
}

// recorder is a slog.Handler that keeps its records and signals each one.
type recorder struct {
	mu    sync.Mutex
	lines []line
	added chan struct{}
}

func newRecorder() *recorder { return &recorder{added: make(chan struct{}, 100)} }

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	l := line{msg: rec.Message}
	rec.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "id":
			l.id = a.Value.Int64()
		case ratelog.SuppressedKey:
			l.suppressed = a.Value.Int64()
		}
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, l)
	r.mu.Unlock()
	r.added <- struct{}{}
	return nil
}

func (r *recorder) all() []line {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]line(nil), r.lines...)
}

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestLogLimitsEachMessage(t *testing.T) {
	t.Parallel()
	// event is one call of Log, after the clock has moved by after.
	type event struct {
		after time.Duration
		msg   string
	}
	tests := []struct {
		name   string
		events []event
		want   []line
	}{
		{
			name:   "first occurrence is logged",
			events: []event{{0, "denied"}},
			want:   []line{{msg: "denied", id: 0}},
		},
		{
			name:   "repeats within the interval are counted, not logged",
			events: []event{{0, "denied"}, {time.Second, "denied"}, {time.Second, "denied"}, {9 * time.Second, "denied"}},
			want:   []line{{msg: "denied", id: 0}, {msg: "denied", id: 3, suppressed: 2}},
		},
		{
			name:   "a quiet interval resets the count",
			events: []event{{0, "denied"}, {10 * time.Second, "denied"}, {20 * time.Second, "denied"}},
			want:   []line{{msg: "denied", id: 0}, {msg: "denied", id: 1}, {msg: "denied", id: 2}},
		},
		{
			name:   "messages are limited separately",
			events: []event{{0, "denied"}, {0, "malformed"}, {time.Second, "denied"}, {time.Second, "malformed"}},
			want:   []line{{msg: "denied", id: 0}, {msg: "malformed", id: 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder()
			clock := &fakeClock{t: time.Unix(1_000_000, 0)}
			rl := ratelog.New(slog.New(rec), 10*time.Second, ratelog.WithClock(clock.now), ratelog.WithoutFlush())
			for i, e := range tt.events {
				clock.advance(e.after)
				rl.Log(t.Context(), e.msg, "id", i)
			}
			require.Equal(t, tt.want, rec.all())
		})
	}
}

// TestLogFlushesTheCountAtTheEndOfTheInterval checks that a flood that
// stops is still reported with its count, without a later occurrence.
func TestLogFlushesTheCountAtTheEndOfTheInterval(t *testing.T) {
	t.Parallel()
	rec := newRecorder()
	rl := ratelog.New(slog.New(rec), 20*time.Millisecond)
	for i := range 5 {
		rl.Log(t.Context(), "denied", "id", i)
	}
	for range 2 {
		select {
		case <-rec.added:
		case <-time.After(10 * time.Second):
			t.Fatalf("no flush; lines so far: %v", rec.all())
		}
	}
	require.Equal(t, []line{{msg: "denied", id: 0}, {msg: "denied", id: 4, suppressed: 4}}, rec.all())
}

func TestLogLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		opts    []ratelog.Option
		want    string
		handler slog.Level // least severe level the handler writes
	}{
		{name: "warn by default", handler: slog.LevelInfo, want: "level=WARN msg=denied\n"},
		{name: "WithLevel", opts: []ratelog.Option{ratelog.WithLevel(slog.LevelError)}, handler: slog.LevelInfo, want: "level=ERROR msg=denied\n"},
		{name: "below the handler's level", handler: slog.LevelError, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tt.handler, ReplaceAttr: dropTime}))
			ratelog.New(l, time.Hour, append(tt.opts, ratelog.WithoutFlush())...).Log(t.Context(), "denied")
			require.Equal(t, tt.want, buf.String())
		})
	}
}

// dropTime removes the time from text log lines, for stable output.
func dropTime(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// ExampleLogger shows the lines a flood of one message produces.
func ExampleLogger() {
	clock := time.Unix(0, 0)
	l := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{ReplaceAttr: dropTime}))
	rl := ratelog.New(l, time.Minute, ratelog.WithClock(func() time.Time { return clock }), ratelog.WithoutFlush())
	for range 1000 {
		rl.Log(context.Background(), "audit read denied", "identity", "spiffe://example.org/ns/x/sa/y")
		clock = clock.Add(100 * time.Millisecond)
	}
	// Output:
	// level=WARN msg="audit read denied" identity=spiffe://example.org/ns/x/sa/y
	// level=WARN msg="audit read denied" identity=spiffe://example.org/ns/x/sa/y suppressed=599
}

// TestFlushWritesPendingCountsNow: at shutdown, occurrences left out
// since each message's last line go out at once, one line per key in key
// order with the last occurrence's args; keys without any are left alone,
// and a second Flush has nothing to write.
func TestFlushWritesPendingCountsNow(t *testing.T) {
	t.Parallel()
	rec := newRecorder()
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	rl := ratelog.New(slog.New(rec), time.Hour, ratelog.WithClock(clock.now), ratelog.WithoutFlush())
	for i := range 4 {
		rl.LogKey(t.Context(), "b ExecutePlan Unknown", "finished call", "id", i)
	}
	rl.LogKey(t.Context(), "a ListAuditEvents PermissionDenied", "denied", "id", 10)
	rl.LogKey(t.Context(), "a ListAuditEvents PermissionDenied", "denied", "id", 11)
	rl.LogKey(t.Context(), "c quiet", "quiet", "id", 20)
	require.Len(t, rec.all(), 3, "the first occurrence of each key")

	rl.Flush()
	require.Equal(t, []line{
		{msg: "finished call", id: 0}, {msg: "denied", id: 10}, {msg: "quiet", id: 20},
		{msg: "denied", id: 11, suppressed: 1}, {msg: "finished call", id: 3, suppressed: 3},
	}, rec.all())
	rl.Flush()
	require.Len(t, rec.all(), 5)
}
