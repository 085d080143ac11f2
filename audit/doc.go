// Package audit is Stage-4's tamper-evident audit trail: the event model
// (Event, its own Go types, not the wire messages), the record encoding and
// hash chain (format in docs/AUDIT_LOG.md), the verifier that walks the
// chain, and Log, which records events in a Store.
//
// The records are also the leaves of an RFC 6962 Merkle tree (tree.go):
// stores keep its stored hashes (golang.org/x/mod/sumdb/tlog's layout)
// with the records, Log signs C2SP checkpoints of it (checkpoint.go), and
// proofs are made from the stored hashes with tlog.
//
// A Store keeps the records; its rules are written on the interface and
// each has a test in the conformance suite, audit/storetest, that every
// store passes: audit/segstore (a local directory of segment files),
// audit/pgstore (PostgreSQL, shared by replicas) and audit/memstore (in
// memory, for tests). Each registers a Driver for the locations it serves
// (Register); Open and Resolve are the one place where an audit log
// location picks its store, for serve, verify, prove and the load tool.
//
// Log is made of small parts (see Log): the writer group-commits
// concurrent appends, the health supervisor turns failures and pings into
// health, the sweeper closes executions a stopped process left open, the
// checkpointer signs, and the reader lists with page tokens of one
// authenticated format for every store. The gRPC edge (package server)
// converts events to and from stage4.v1 messages and maps this package's
// errors to status codes; this package does not import gRPC.
//
// The log is fail-closed: an event is acknowledged only once its store
// says it is durable, and while the store cannot say so every new
// execution is refused. A local log that failed a write or a sync stays
// failed (after a failed fsync the kernel may have dropped the dirty
// pages); a database store turns healthy again once it answers.
package audit
