package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/internal/ratelog"
)

// callLogInterval is the least time between two call log lines of one
// method, code and level (and reason, for unary calls, see CallLog): a caller repeating a failing call (or every
// caller, while the audit store is down) gets one line a second with the
// count of the ones left out, not one line per call.
const callLogInterval = time.Second

// gatewayCallLogger is GRPCLogger with the call lines of failed calls
// rate-limited per method, code and level (see callLogInterval), for the
// stream calls (health Watch, reflection); unary calls have CallLog. Debug
// lines (successful calls) are not limited: they are off unless asked for.
func gatewayCallLogger(l *slog.Logger) logging.Logger {
	plain := GRPCLogger(l)
	limited := callLogLimiters(l)
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		rl, ok := limited[lvl]
		if !ok {
			plain.Log(ctx, lvl, msg, fields...)
			return
		}
		// Method and code come from the server's own registry and the
		// status code set, never from caller data: a bounded set of keys.
		var method, code string
		kept := fields[:0:0]
		for i := 0; i+1 < len(fields); i += 2 {
			switch fields[i] {
			case "grpc.error":
				continue
			case "grpc.method":
				method = fmt.Sprint(fields[i+1])
			case "grpc.code":
				code = fmt.Sprint(fields[i+1])
			}
			kept = append(kept, fields[i], fields[i+1])
		}
		rl.LogKey(ctx, msg+" "+method+" "+code, msg, kept...)
	})
}

// callLogLimiters are the rate limiters of failed calls' log lines, one per
// level those lines use.
func callLogLimiters(l *slog.Logger) map[logging.Level]*ratelog.Logger {
	limited := map[logging.Level]*ratelog.Logger{}
	for _, lvl := range []logging.Level{logging.LevelInfo, logging.LevelWarn, logging.LevelError} {
		limited[lvl] = ratelog.New(l, callLogInterval, ratelog.WithLevel(slog.Level(lvl)))
	}
	return limited
}

// GRPCLogger adapts slog to go-grpc-middleware's logging interceptor. It
// drops the interceptor's grpc.error field: error messages can quote user
// data (Stage-3 echoes parameter values, violations name parameter keys),
// and the code is all a log line needs; the audit log keeps the rest.
func GRPCLogger(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		if !l.Enabled(ctx, slog.Level(lvl)) {
			return
		}
		kept := fields[:0:0]
		for i := 0; i+1 < len(fields); i += 2 {
			if fields[i] != "grpc.error" {
				kept = append(kept, fields[i], fields[i+1])
			}
		}
		l.Log(ctx, slog.Level(lvl), msg, kept...)
	})
}

// CallLogOptions log each call's start and finish with method, peer, code
// and duration, and never its payloads: requests carry token_hash and
// parameter values, which must not leave the audit log's control. The
// reference Stage-3 uses them: tests watch its "started call" lines.
var CallLogOptions = []logging.Option{
	logging.WithLogOnEvents(logging.StartCall, logging.FinishCall),
}

// GatewayCallLogOptions log each Stage-4 call once, when it finishes, and
// successful calls only at debug level: every ExecutePlan is in the audit
// log and every call in the metrics already, and a log line per successful
// call cost about a tenth of the gateway's CPU under load. Failures keep
// the default levels (info for the caller's errors, warn and error for the
// server's), so a problem is always in the log.
var GatewayCallLogOptions = []logging.Option{
	logging.WithLogOnEvents(logging.FinishCall),
	logging.WithFieldsFromContext(traceFields),
	logging.WithLevels(func(c codes.Code) logging.Level {
		if c == codes.OK {
			return logging.LevelDebug
		}
		return logging.DefaultServerCodeToLevel(c)
	}),
}

// RecoveredPanic logs a handler panic server-side, with its stack, and
// gives the client only a plain INTERNAL so that no internals leak.
func RecoveredPanic(l *slog.Logger) func(ctx context.Context, p any) error {
	return func(ctx context.Context, p any) error {
		l.ErrorContext(ctx, "panic in handler", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	}
}

// traceFields names the call's trace in its log line, so that a log line
// leads to the trace and the audit events (which carry the same id).
func traceFields(ctx context.Context) logging.Fields {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return logging.Fields{"trace_id", sc.TraceID().String()}
	}
	return nil
}

// splitFullMethod splits "/package.Service/Method" as go-grpc-middleware
// does for its grpc.service and grpc.method fields.
func splitFullMethod(fullMethod string) (service, method string) {
	name := strings.TrimPrefix(fullMethod, "/")
	if i := strings.Index(name, "/"); i >= 0 {
		return name[:i], name[i+1:]
	}
	return "unknown", "unknown"
}
