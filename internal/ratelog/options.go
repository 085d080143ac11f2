package ratelog

import (
	"log/slog"
	"time"
)

// Option configures New.
type Option func(*Logger)

// WithLevel sets the level of the lines; the default is slog.LevelWarn.
func WithLevel(level slog.Level) Option {
	return func(r *Logger) { r.level = level }
}

// WithClock replaces time.Now, for tests that step through intervals.
func WithClock(now func() time.Time) Option {
	return func(r *Logger) { r.now = now }
}

// WithoutFlush turns off the line written at the end of an interval for
// occurrences that no later one has reported: their count then goes out
// only with the next occurrence. For tests that drive the clock by hand,
// where a real timer would race with them.
func WithoutFlush() Option {
	return func(r *Logger) { r.noFlush = true }
}
