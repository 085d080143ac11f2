// Package stage3client is Stage-4's client of the Stage-3 executor: the
// generated Stage3ServiceClient with the dial options, deadline, metadata
// allow-list and error mapping that make "forward once, verbatim" hold.
//
// # Exactly one attempt
//
// The connection is created with grpc.WithDisableRetry, so neither a retry
// policy nor hedging (including one pushed by a service config, which is
// ignored too) can send a plan twice. gRPC's transparent retry remains: it
// re-sends only an attempt that provably never reached the server's
// application (the stream was never created, or HTTP/2 refused it with
// REFUSED_STREAM or a GOAWAY above the stream's id), so Stage-3 still sees a
// plan at most once. DialOptions passed to New come first and cannot undo
// these settings, and must not add a retrying interceptor.
//
// # Metadata
//
// Only x-request-id of the caller's metadata goes on to Stage-3, at most
// MaxForwardedValues values, each at most MaxForwardedValueBytes long;
// longer values are dropped, not cut. An ExecutePlan call's request_id
// goes on as RequestIDHeader (x-stage4-request-id) when the caller of
// Execute sets it with WithRequestID, so that Stage-3 can dedupe too; a
// caller's own metadata of that name is never forwarded. Trace context (traceparent,
// tracestate) is OpenTelemetry's to propagate: pass an otelgrpc client
// stats handler to New, or only its propagator in an interceptor
// (telemetry.InjectUnaryClientInterceptor), as the gateway does with
// tracing on and off.
//
// # Errors
//
// Execute and ExecuteEncoded return Stage-3's response unchanged or a status
// error carrying a google.rpc.ErrorInfo with domain rpcerr.Domain and one of
// these reasons:
//
//   - rpcerr.Stage3Rejected, with Stage-3's own code (PERMISSION_DENIED,
//     UNAUTHENTICATED, INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION) and
//     message "stage3: " + Stage-3's message. A rejection does not say that no
//     step ran: Stage-3 may refuse a later step's parameters after earlier steps.
//   - rpcerr.Stage3NotReached, code UNAVAILABLE: the plan provably never
//     reached Stage-3, so nothing was executed and a retry is safe.
//   - rpcerr.OutcomeUnknown, code UNKNOWN: Stage-3 may have acted (a deadline
//     or broken connection after sending, INTERNAL, UNAVAILABLE, ABORTED,
//     RESOURCE_EXHAUSTED or any other code, a failed step).
//   - rpcerr.PlanInvalid, code INVALID_ARGUMENT: the plan is larger than
//     MaxMessageBytes and was not sent.
//
// When the caller cancels its own call the code is CANCELED, with the reason
// saying whether the plan had been sent.
//
// The codes are chosen for what automatic retries do with them. Service
// meshes and gRPC retry policies commonly retry UNAVAILABLE, which is safe
// only when nothing ran, and sometimes DEADLINE_EXCEEDED, INTERNAL or
// RESOURCE_EXHAUSTED; almost none retry UNKNOWN. So UNAVAILABLE is kept for
// "nothing executed", and every outcome in which Stage-3 may have acted
// becomes UNKNOWN, which no layer retries blindly.
//
// "Provably never reached" is decided with the grpc.Peer call option:
// grpc-go (v1.85, stream.go clientStream.finish) fills the peer only when the
// final attempt created a transport stream, so an error with an empty peer
// means no stream carried the plan. The one case where an earlier stream did
// exist, transparent retry, is by definition one the server did not process;
// and when writing the message itself fails (csAttempt.sendMsg returns io.EOF
// before the peer is recorded) no byte of the message was queued, so Stage-3
// cannot have executed it. Any error with a peer is treated as "sent".
package stage3client
