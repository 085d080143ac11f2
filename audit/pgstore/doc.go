// Package pgstore keeps Stage-4's audit log in PostgreSQL, so that several
// replicas of the gateway share one log: an audit.Store over jackc/pgx v5
// and its pool. The section "PostgreSQL" of docs/AUDIT_LOG.md describes the
// tables and how a row maps to a record; the record format and its hash
// chain are those of the file (the rest of docs/AUDIT_LOG.md), and
// audit.ChainChecker checks both.
//
// # Connecting
//
// Open takes a postgres:// or postgresql:// URL. Everything pgx reads from
// a URL applies, notably:
//
//   - pool: pool_max_conns (default max(4, CPUs); a replica needs about
//     four: the appender, Ping, a List or two), pool_max_conn_lifetime,
//     pool_max_conn_idle_time, pool_health_check_period;
//   - TLS: sslmode (use verify-full for a managed database), sslrootcert
//     (the provider's CA bundle), sslcert and sslkey for client
//     certificates; a password may come from the URL, PGPASSWORD or a
//     .pgpass file;
//   - connect_timeout (default here 5 s), application_name (default
//     "stage4"), search_path to keep the tables in a schema of their own,
//     and any other server setting as a parameter of its own name;
//   - default_query_exec_mode=exec (or simple_protocol) behind a pooler in
//     transaction mode that cannot keep prepared statements.
//
// The store also sets idle_in_transaction_session_timeout to 5 s unless
// the URL does: a replica that freezes while it holds the head's row lock
// then stops the others for seconds, not until TCP gives up.
//
// # Ordering appends across replicas
//
// Every Append is one transaction that starts by locking the single row
// of audit_head FOR UPDATE. Whoever holds it reads the true head, builds
// its records on it, inserts them, moves the head and commits; the next
// replica's Append then reads the new head. So batches from all replicas
// are serialised, sequences are gapless from 1, and there is one chain.
// A lost connection during COMMIT is resolved before Append returns (see
// Append). The price is that batches of different replicas do not
// overlap: the lock is held through each commit's WAL flush.
//
// # Replicas that stop
//
// Each process registers a heartbeat (table audit_replicas), refreshed by
// Ping, and owns the executions it opens (table audit_open). Interrupted
// hands a stopped process's open executions to exactly one live replica:
// to the next process of the same replica name at once, or to any replica
// once the execution's deadline and a grace period have passed and its
// owner's heartbeat has been silent for the grace period.
package pgstore
