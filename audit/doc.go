// Package audit is Stage-4's tamper-evident audit trail: an append-only,
// hash-chained log of JSON lines (format in docs/AUDIT_LOG.md), the unary
// server interceptor that records every ExecutePlan call in it, and the
// verifier that walks the chain.
//
// The package is fail-closed. An event is acknowledged only after it is
// written and fsynced; the first write or fsync error fails the log for good,
// because after a failed fsync the kernel may have dropped the dirty pages and
// a retry could report success for data that is gone. From then on every
// ExecutePlan call is refused before it reaches Stage-3.
package audit
