package main

import (
	"io"
	"log/slog"
)

// logFlags are the logging flags every server command shares.
type logFlags struct {
	level  string
	format string
}

// newLogger builds the process logger from the --log-level and --log-format
// flag values. JSON is the default because log pipelines parse it; text is
// for people reading a terminal.
func newLogger(w io.Writer, lf logFlags) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(lf.level)); err != nil {
		return nil, usageError("--log-level %q: want debug, info, warn or error", lf.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch lf.format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, usageError("--log-format %q: want json or text", lf.format)
	}
}
