package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/internal/gateway"
)

// TestCallLogWritesWhatTheMiddlewareWrites checks the gateway's fast
// call log against go-grpc-middleware's with GatewayCallLogOptions, which
// it replaces for unary calls: for every code and log level, both write
// the same lines with the same fields, but for the times they take, for
// errors without the details that CallLog adds fields for
// (TestFailedCallLineSaysWhy).
func TestCallLogWritesWhatTheMiddlewareWrites(t *testing.T) {
	t.Parallel()
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6}, TraceFlags: trace.FlagsSampled,
	})
	info := &grpc.UnaryServerInfo{FullMethod: "/stage4.v1.Stage4Service/ExecutePlan"}
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		for _, code := range []codes.Code{codes.OK, codes.InvalidArgument, codes.Unavailable, codes.Internal, codes.Unknown} {
			for _, withContext := range []bool{false, true} {
				name := level.String() + "/" + code.String()
				if withContext {
					name += "/peer-deadline-trace"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					ctx := t.Context()
					if withContext {
						ctx = peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 4567}})
						ctx = trace.ContextWithSpanContext(ctx, sc)
						var cancel context.CancelFunc
						ctx, cancel = context.WithTimeout(ctx, time.Hour)
						defer cancel()
					}
					handler := func(context.Context, any) (any, error) {
						if code == codes.OK {
							return "response", nil
						}
						return nil, status.Error(code, "it failed: secret detail")
					}
					var want, got bytes.Buffer
					newLogger := func(b *bytes.Buffer) *slog.Logger {
						return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: level}))
					}
					mw := logging.UnaryServerInterceptor(gateway.GRPCLogger(newLogger(&want)), gateway.GatewayCallLogOptions...)
					resp1, err1 := mw(ctx, "request", info, handler)
					resp2, err2 := gateway.NewCallLog(newLogger(&got)).UnaryServerInterceptor()(ctx, "request", info, handler)
					require.Equal(t, resp1, resp2)
					require.Equal(t, status.Code(err1), status.Code(err2))
					require.Equal(t, logLines(t, &want), logLines(t, &got))
					require.NotContains(t, got.String(), "secret detail", "error messages are never logged")
					if code != codes.OK && level <= slog.LevelInfo {
						require.Len(t, logLines(t, &got), 1, "a failed call is logged at info")
					}
				})
			}
		}
	}
}

// logLines decodes JSON log lines with the values that depend on the
// moment replaced by their presence.
func logLines(t *testing.T, b *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		m := map[string]any{}
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		for _, k := range []string{"time", "grpc.start_time", "grpc.time_ms"} {
			if _, ok := m[k]; ok {
				m[k] = "present"
			}
		}
		out = append(out, m)
	}
	return out
}
