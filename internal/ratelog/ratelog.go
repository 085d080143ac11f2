// Package ratelog logs warnings that a caller can repeat at will (refused
// calls, malformed requests) without letting the caller flood the log: the
// first occurrence of a message is logged at once, later ones at most once
// per interval, each line saying how many were left out before it.
package ratelog

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// SuppressedKey is the attribute that counts the occurrences of a message
// left out since the previous line with that message.
const SuppressedKey = "suppressed"

// Logger rate-limits log lines per message. It is safe for concurrent use.
type Logger struct {
	l        *slog.Logger
	level    slog.Level
	interval time.Duration
	now      func() time.Time
	noFlush  bool

	mu   sync.Mutex
	msgs map[string]*window
}

// window is the state of one message.
type window struct {
	msg        string          // the message of the key's lines
	next       time.Time       // no line before this, unless flushed
	suppressed int             // occurrences left out since the last line
	lastCtx    context.Context // of the last occurrence left out, for the flush
	lastArgs   []any
	timer      *time.Timer // pending flush of the suppressed count, or nil
}

// New returns a Logger that writes to l, each message at most once per
// interval.
func New(l *slog.Logger, interval time.Duration, opts ...Option) *Logger {
	r := &Logger{l: l, level: slog.LevelWarn, interval: interval, now: time.Now, msgs: map[string]*window{}}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Log logs msg with args unless msg was logged less than an interval ago,
// in which case it only counts it. The count goes out with the next line of
// msg: the next occurrence after the interval, or, when none comes, a line
// at the end of the interval that repeats the last occurrence's args. msg is
// the key of the limit, so it must come from a fixed set (a constant), never
// from user data, or the Logger would keep state per distinct message.
func (r *Logger) Log(ctx context.Context, msg string, args ...any) {
	r.LogKey(ctx, msg, msg, args...)
}

// LogKey is Log with the limit kept per key rather than per message, for
// one message with a few kinds of occurrence (a call log line per method
// and code, say). key must come from a fixed set too.
func (r *Logger) LogKey(ctx context.Context, key, msg string, args ...any) {
	if !r.l.Enabled(ctx, r.level) {
		return
	}
	now := r.now()
	r.mu.Lock()
	w, ok := r.msgs[key]
	if !ok {
		w = &window{msg: msg}
		r.msgs[key] = w
	}
	if now.Before(w.next) {
		w.suppressed++
		// The context outlives the call that passed it only as a carrier
		// of log attributes; the flush never waits on it.
		w.lastCtx, w.lastArgs = context.WithoutCancel(ctx), args
		if w.timer == nil && !r.noFlush {
			w.timer = time.AfterFunc(w.next.Sub(now), func() { r.flush(key) })
		}
		r.mu.Unlock()
		return
	}
	suppressed := w.take(now.Add(r.interval))
	r.mu.Unlock()
	r.write(ctx, msg, suppressed, args)
}

// flush writes the count of key's suppressed occurrences at the end of its
// interval, when no later occurrence has done so.
func (r *Logger) flush(key string) {
	r.mu.Lock()
	w, now := r.msgs[key], r.now()
	// A timer that fired while a line of msg was being written is stale:
	// that line has started a new interval and owns w.timer now.
	if now.Before(w.next) || w.suppressed == 0 {
		r.mu.Unlock()
		return
	}
	w.timer = nil
	ctx, args, msg := w.lastCtx, w.lastArgs, w.msg
	suppressed := w.take(now.Add(r.interval))
	r.mu.Unlock()
	r.write(ctx, msg, suppressed, args)
}

// Flush writes, now, the count of the occurrences of every message left
// out since its last line, in the order of their keys, as the lines at the
// end of their intervals would. A process calls it as it stops, when those
// lines would never come: four calls that failed in the last second before
// shutdown show as one line and one "suppressed: 3", not one line.
func (r *Logger) Flush() {
	type line struct {
		key, msg   string
		ctx        context.Context
		args       []any
		suppressed int
	}
	r.mu.Lock()
	now := r.now()
	var lines []line
	for key, w := range r.msgs {
		if w.suppressed == 0 {
			continue
		}
		l := line{key: key, msg: w.msg, ctx: w.lastCtx, args: w.lastArgs}
		l.suppressed = w.take(now.Add(r.interval))
		lines = append(lines, l)
	}
	r.mu.Unlock()
	slices.SortFunc(lines, func(a, b line) int { return strings.Compare(a.key, b.key) })
	for _, l := range lines {
		r.write(l.ctx, l.msg, l.suppressed, l.args)
	}
}

// take starts a new interval that ends at next and returns the number of
// occurrences suppressed in the one before.
func (w *window) take(next time.Time) int {
	n := w.suppressed
	w.next, w.suppressed, w.lastCtx, w.lastArgs = next, 0, nil, nil
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	return n
}

func (r *Logger) write(ctx context.Context, msg string, suppressed int, args []any) {
	if suppressed > 0 {
		args = append(args[:len(args):len(args)], SuppressedKey, suppressed)
	}
	r.l.Log(ctx, r.level, msg, args...)
}
