package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/identity"
	"github.com/stage4/stage4/internal/ratelog"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/stage3watch"
	"github.com/stage4/stage4/server"
)

// Fields of a failed call's log line beyond go-grpc-middleware's. Each is
// Stage-4's own word (a reason, a code, a class of transport failure) or
// an id, never an error message: messages can quote a plan (Stage-3 echoes
// parameter values, violations name parameter keys).
const (
	// FieldReason is the ErrorInfo reason of the error.
	FieldReason = "reason"
	// FieldExecutionID is the execution id of an ExecutePlan call.
	FieldExecutionID = "execution_id"
	// FieldRequestID is the caller's first x-request-id, cut to
	// maxLoggedRequestIDBytes.
	FieldRequestID = "x_request_id"
	// FieldPeerIdentity is the caller's verified identity
	// (internal/identity), when it has one.
	FieldPeerIdentity = "peer.identity"
	// FieldStage3Code is the code Stage-3 answered with.
	FieldStage3Code = "stage3_code"
	// FieldCause is why Stage-3 was not reached, or why the connection to
	// it broke: a stage3watch.Cause.
	FieldCause = "cause"
	// FieldReplayed is true on the line of an ExecutePlan answered from
	// an earlier call with the same request_id (x-stage4-replayed).
	FieldReplayed = "replayed"
)

// maxLoggedRequestIDBytes bounds the x-request-id in a log line: an id is
// short, and the caller must not be able to make log lines of kilobytes.
const maxLoggedRequestIDBytes = 128

// CallLog is the gateway's unary call log and its count of failed calls.
// Successful calls cost nothing but a nil check unless debug is on (see
// UnaryServerInterceptor); a failed call gets one line, rate-limited per
// method, code and reason (see callLogInterval), and is counted in
// stage4_failed_calls_total.
type CallLog struct {
	l       *slog.Logger
	limited map[logging.Level]*ratelog.Logger
	failed  *prometheus.CounterVec
}

// NewCallLog returns the call log writing to l.
func NewCallLog(l *slog.Logger) *CallLog {
	return &CallLog{
		l:       l,
		limited: callLogLimiters(l),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "stage4", Name: "failed_calls_total",
			Help: "Calls that failed, by method, code and ErrorInfo reason (ERROR_REASON_UNSPECIFIED when none); " +
				"grpc_server_handled_total counts every call by code.",
		}, []string{"grpc_service", "grpc_method", "grpc_code", "reason"}),
	}
}

// Register registers stage4_failed_calls_total with r.
func (c *CallLog) Register(r prometheus.Registerer) error { return r.Register(c.failed) }

// Flush writes the counts of call log lines left out by the rate limit
// since their last line; the gateway calls it when every call has ended, so
// that a burst of failures just before shutdown is not reported as one.
func (c *CallLog) Flush() {
	for _, lvl := range []logging.Level{logging.LevelInfo, logging.LevelWarn, logging.LevelError} {
		c.limited[lvl].Flush()
	}
}

// UnaryServerInterceptor logs each call once, when it finishes: at debug
// level when it succeeded (the audit log and the metrics record every
// call already), else at the level go-grpc-middleware gives its code, with
// the middleware's fields (method, peer, start, deadline, code, duration)
// and the ones above. Nothing is built for a line that will not be written:
// the middleware built its fields for every call before it asked the
// logger's level, about 8 µs per successful ExecutePlan under load.
//
// For ExecutePlan it notes the execution id header as the audit
// interceptor sends it (an error carries it in its ErrorInfo only when
// the audit interceptor made it): two small allocations per call, about
// 0.1 µs (BenchmarkCallLogSuccess).
func (c *CallLog) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		var hdr *headerNote
		if info.FullMethod == stage4v1.Stage4Service_ExecutePlan_FullMethodName {
			if st := grpc.ServerTransportStreamFromContext(ctx); st != nil {
				hdr = &headerNote{ServerTransportStream: st}
				ctx = grpc.NewContextWithServerTransportStream(ctx, hdr)
			}
		}
		resp, err := handler(ctx, req)
		if err == nil {
			// A replay is a caller's retry: worth a line (rate-limited)
			// where a first success is not.
			lvl := slog.LevelDebug
			if hdr != nil && hdr.replayed {
				lvl = slog.LevelInfo
			}
			if c.l.Enabled(ctx, lvl) {
				c.write(ctx, info, lvl, codes.OK, start, nil, hdr)
			}
			return resp, nil
		}
		code := logging.DefaultErrorToCode(err)
		service, method := splitFullMethod(info.FullMethod)
		reason := rpcerr.Reason(err)
		c.failed.WithLabelValues(service, method, code.String(), reason.String()).Inc()
		lvl := slog.Level(logging.DefaultServerCodeToLevel(code))
		if c.l.Enabled(ctx, lvl) {
			c.write(ctx, info, lvl, code, start, err, hdr)
		}
		return resp, err
	}
}

// write writes the line of one call; err is nil for a successful one.
func (c *CallLog) write(ctx context.Context, info *grpc.UnaryServerInfo, lvl slog.Level, code codes.Code, start time.Time, err error, hdr *headerNote) {
	duration := time.Since(start)
	service, method := splitFullMethod(info.FullMethod)
	attrs := make([]slog.Attr, 0, 20)
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	attrs = append(attrs,
		slog.String(logging.SystemTag[0], logging.SystemTag[1]),
		slog.String(logging.ComponentFieldKey, logging.KindServerFieldValue),
		slog.String(logging.ServiceFieldKey, service),
		slog.String(logging.MethodFieldKey, method),
		slog.String(logging.MethodTypeFieldKey, string(interceptors.Unary)),
	)
	p, hasPeer := peer.FromContext(ctx)
	if hasPeer {
		attrs = append(attrs, slog.String("peer.address", p.Addr.String()))
	}
	attrs = append(attrs, slog.String("grpc.start_time", start.Format(time.RFC3339)))
	if d, ok := ctx.Deadline(); ok {
		attrs = append(attrs, slog.String("grpc.request.deadline", d.Format(time.RFC3339)))
	}
	// grpc.error is left out, as GRPCLogger leaves it out.
	attrs = append(attrs, slog.String("grpc.code", code.String()))
	if err != nil {
		attrs = append(attrs, failureAttrs(ctx, err, p, hasPeer, hdr)...)
	}
	if hdr != nil && hdr.replayed {
		if err == nil && hdr.executionID != "" {
			attrs = append(attrs, slog.String(FieldExecutionID, hdr.executionID))
		}
		attrs = append(attrs, slog.Bool(FieldReplayed, true))
	}
	// As logging.DurationToTimeMillisFields renders it.
	attrs = append(attrs, slog.String("grpc.time_ms", fmt.Sprintf("%v", float32(duration.Nanoseconds()/1000)/1000)))
	args := make([]any, len(attrs))
	for i, a := range attrs {
		args[i] = a
	}
	rl, ok := c.limited[logging.Level(lvl)]
	if !ok {
		c.l.Log(ctx, lvl, "finished call", args...)
		return
	}
	// Method, code and reason come from the server's registry, the code
	// set and the reason enum, never from caller data: a bounded set of
	// keys.
	rl.LogKey(ctx, "finished call "+info.FullMethod+" "+code.String()+" "+rpcerr.Reason(err).String(), "finished call", args...)
}

// failureAttrs are the fields that say why a call failed and which call
// it was.
func failureAttrs(ctx context.Context, err error, p *peer.Peer, hasPeer bool, hdr *headerNote) []slog.Attr {
	var attrs []slog.Attr
	info := rpcerr.Info(err)
	if info != nil {
		attrs = append(attrs, slog.String(FieldReason, rpcerr.Reason(err).String()))
	}
	execID := info.GetMetadata()["execution_id"]
	if execID == "" && hdr != nil {
		execID = hdr.executionID
	}
	if execID != "" {
		attrs = append(attrs, slog.String(FieldExecutionID, execID))
	}
	if ids := metadata.ValueFromIncomingContext(ctx, "x-request-id"); len(ids) > 0 {
		id := ids[0]
		if len(id) > maxLoggedRequestIDBytes {
			id = strings.ToValidUTF8(id[:maxLoggedRequestIDBytes], "")
		}
		attrs = append(attrs, slog.String(FieldRequestID, id))
	}
	if hasPeer {
		if id, ok := identity.FromPeer(p); ok && id.Name() != "" {
			attrs = append(attrs, slog.String(FieldPeerIdentity, id.Name()))
		}
	}
	stage3Code := info.GetMetadata()["stage3_code"]
	if stage3Code != "" {
		attrs = append(attrs, slog.String(FieldStage3Code, stage3Code))
	}
	if cause := stage3Cause(err, stage3Code); cause != stage3watch.CauseNone {
		attrs = append(attrs, slog.String(FieldCause, string(cause)))
	}
	return attrs
}

// stage3Cause classifies the transport failure behind a Stage-3 error: a
// plan that did not reach Stage-3, or a connection that broke or timed
// out while Stage-3 had it. Stage-3's own answers (a rejection, an
// internal error) have their code and no cause.
func stage3Cause(err error, stage3Code string) stage3watch.Cause {
	switch rpcerr.Reason(err) {
	case rpcerr.Stage3NotReached:
		return stage3watch.Classify(err)
	case rpcerr.OutcomeUnknown:
		if stage3Code == codes.Unavailable.String() || stage3Code == codes.DeadlineExceeded.String() {
			return stage3watch.Classify(err)
		}
	}
	return stage3watch.CauseNone
}

// headerNote is the call's server transport stream, noting the execution
// id header, and whether the answer is a replay, as the audit interceptor
// sets or sends them. The audit interceptor runs in the call's goroutine,
// as the call log does after it.
type headerNote struct {
	grpc.ServerTransportStream
	executionID string
	replayed    bool
}

func (h *headerNote) note(md metadata.MD) {
	if v := md.Get(server.HeaderExecutionID); len(v) > 0 {
		h.executionID = v[0]
	}
	if v := md.Get(server.HeaderReplayed); len(v) > 0 && v[0] == "true" {
		h.replayed = true
	}
}

// SetHeader notes md and passes it on.
func (h *headerNote) SetHeader(md metadata.MD) error {
	h.note(md)
	return h.ServerTransportStream.SetHeader(md)
}

// SendHeader notes md and passes it on.
func (h *headerNote) SendHeader(md metadata.MD) error {
	h.note(md)
	return h.ServerTransportStream.SendHeader(md)
}
