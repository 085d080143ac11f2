// Package audit is Stage-4's tamper-evident audit trail: the event model,
// the record encoding and hash chain (format in docs/AUDIT_LOG.md), the
// verifier that walks the chain, and Log, which group-commits events into
// a Store and closes executions that a stopped process left open.
//
// The records are also the leaves of an RFC 6962 Merkle tree (tree.go):
// stores keep its stored hashes (golang.org/x/mod/sumdb/tlog's layout)
// with the records, Log signs C2SP checkpoints of it (checkpoint.go), and
// proofs are made from the stored hashes with tlog.
//
// A Store keeps the records: package audit/filestore in one local file,
// package audit/pgstore in a PostgreSQL database that several replicas
// share. Package audit/storetest is the conformance suite both pass. The
// gRPC interceptor that records every ExecutePlan call is in package
// server, at the edge where errors become status codes.
//
// The log is fail-closed: an event is acknowledged only once its store
// says it is durable, and while the store cannot say so every append is
// refused. A file store that failed stays failed (after a failed fsync the
// kernel may have dropped the dirty pages); a database store turns healthy
// again once it answers.
package audit
