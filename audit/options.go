package audit

import (
	"github.com/prometheus/client_golang/prometheus"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// Option configures Open.
type Option func(*logConfig)

type logConfig struct {
	registerer prometheus.Registerer
	onFailure  func(error)
	wrapFile   func(File) File
}

// WithRegisterer registers the log's metrics (appends, failures, fsync
// duration, group-commit batch size) with r. Without it the metrics are kept
// but not exported.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(c *logConfig) { c.registerer = r }
}

// WithOnFailure calls f once, with the cause, when the log fails for good, so
// that the server can report NOT_SERVING before any caller sees the error. f
// runs on the log's writer goroutine and must not call Append.
func WithOnFailure(f func(error)) Option {
	return func(c *logConfig) { c.onFailure = f }
}

// WithFileWrapper routes all of the log's file access through wrap(f), where
// f is the opened log file. It exists for fault injection (a File whose Write
// or Sync fails) and for benchmarks; production code has no reason to use it,
// and a wrapper whose Sync does not reach the disk voids the log's durability.
func WithFileWrapper(wrap func(File) File) Option {
	return func(c *logConfig) { c.wrapFile = wrap }
}

// InterceptorOption configures UnaryServerInterceptor.
type InterceptorOption func(*interceptorConfig)

type interceptorConfig struct {
	validate func(*stage4v1.ExecutePlanRequest) error
	planID   func(*stage4v1.Plan) string
}

// WithValidator sets the single validation entry point of ExecutePlan. It
// returns nil for a valid request or the status error to return to the
// caller. Required: UnaryServerInterceptor panics without it, because an
// interceptor that forwarded unvalidated plans would not be fail-closed.
func WithValidator(validate func(*stage4v1.ExecutePlanRequest) error) InterceptorOption {
	return func(c *interceptorConfig) { c.validate = validate }
}

// WithPlanID sets how the plan_id of a plan is computed. It is called on
// every received plan, valid or not, so it must accept any non-nil plan.
// Required: UnaryServerInterceptor panics without it.
func WithPlanID(planID func(*stage4v1.Plan) string) InterceptorOption {
	return func(c *interceptorConfig) { c.planID = planID }
}

// VerifyOption configures Verify and VerifyFile.
type VerifyOption func(*verifyConfig)

type verifyConfig struct {
	progress func(bytesRead int64)
	// onRecord sees every good record; Open uses it to find executions
	// left without a terminal event.
	onRecord func(*stage4v1.AuditEvent)
}

// WithProgress calls f with the number of bytes read so far, about once per
// MiB and once at the end, so that a command line can show progress on
// large files.
func WithProgress(f func(bytesRead int64)) VerifyOption {
	return func(c *verifyConfig) { c.progress = f }
}
