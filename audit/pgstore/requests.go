package pgstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stage4/stage4/audit"
)

// takeOver holds for a key's row (r) that a claim may take over: claimed
// before since ($7), or running past its open_until and the grace period
// ($8 seconds) while its execution is not open (it never reached the log).
const takeOver = `(r.claimed_at < $7
	OR (r.state = 'running' AND r.open_until < now() - make_interval(secs => $8)
		AND NOT EXISTS (SELECT 1 FROM audit_open o WHERE o.execution_id = r.execution_id)))`

// claimRequests inserts the claims of a batch ($1 to $6, one row each)
// and returns, for every key, the row that holds it now: the claim's, or
// the row that was there, taken over when takeOver holds and otherwise
// left as it was (updated to itself). ON CONFLICT DO UPDATE works on the
// latest version of a conflicting row, also one committed after the
// statement's snapshot, and RETURNING gives that version, locked until
// the commit: so one statement both decides and reads, in one round trip.
// The rows come sorted by key, so that batches of two replicas lock common
// keys in one order.
const claimRequests = `INSERT INTO audit_requests AS r (caller, request_id, plan_id, execution_id, state, claimed_at, open_until)
SELECT u.caller, u.request_id, u.plan_id, u.execution_id, 'running', u.claimed_at, u.open_until
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[])
	AS u(caller, request_id, plan_id, execution_id, claimed_at, open_until)
ON CONFLICT (caller, request_id) DO UPDATE SET
	plan_id = CASE WHEN ` + takeOver + ` THEN excluded.plan_id ELSE r.plan_id END,
	execution_id = CASE WHEN ` + takeOver + ` THEN excluded.execution_id ELSE r.execution_id END,
	state = CASE WHEN ` + takeOver + ` THEN 'running' ELSE r.state END,
	answer = CASE WHEN ` + takeOver + ` THEN NULL ELSE r.answer END,
	claimed_at = CASE WHEN ` + takeOver + ` THEN excluded.claimed_at ELSE r.claimed_at END,
	open_until = CASE WHEN ` + takeOver + ` THEN excluded.open_until ELSE r.open_until END
RETURNING r.caller, r.request_id, r.plan_id, r.execution_id, r.state, r.answer, r.claimed_at, r.open_until`

// claimPoolConfig is the configuration of the claim batcher's pool: one
// connection, whose transactions commit without waiting for their WAL
// flush (see ClaimRequest).
func claimPoolConfig(main *pgxpool.Config) *pgxpool.Config {
	c := main.Copy()
	c.MaxConns, c.MinConns = 1, 0
	c.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	c.ConnConfig.RuntimeParams["application_name"] = main.ConnConfig.RuntimeParams["application_name"] + " claims"
	return c
}

// maxClaimBatch bounds the claims of one transaction.
const maxClaimBatch = 256

// claimCall is one ClaimRequest waiting for its batch.
type claimCall struct {
	req   audit.Request
	since time.Time
	done  chan claimResult // buffered: the batcher never blocks on it
}

type claimResult struct {
	held    audit.Request
	claimed bool
	err     error
}

// ClaimRequest claims req.Key. Concurrent claims of this replica are
// batched, as the log group-commits appends: one goroutine takes whatever
// claims are waiting and stores them with one statement in one round
// trip, so that claims cost the database one transaction per batch, on a
// connection of their own, rather than one per call from the pool that
// the appends use.
//
// The batch is one statement on a connection of its own, which commits
// without waiting for its WAL flush (synchronous_commit off): a claim must
// be durable before Stage-3 is called, and the synchronous commit of the execution's
// EXECUTION_STARTED, which follows it, flushes the WAL up to it, the WAL
// being one sequence. A crash of the database before that can lose the
// claim, and then also the execution, which has not reached Stage-3.
func (s *Store) ClaimRequest(ctx context.Context, req audit.Request, since time.Time) (audit.Request, bool, error) {
	if s.closed.Load() {
		return audit.Request{}, false, audit.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return audit.Request{}, false, fmt.Errorf("claim request: %w", err)
	}
	c := &claimCall{req: req, since: since, done: make(chan claimResult, 1)}
	select {
	case s.claims <- c:
	case <-s.claimsStop:
		return audit.Request{}, false, audit.ErrClosed
	case <-ctx.Done():
		return audit.Request{}, false, fmt.Errorf("claim request: %w", ctx.Err())
	}
	select {
	case r := <-c.done:
		return r.held, r.claimed, r.err
	case <-ctx.Done():
		// The batch goes on: the claim may still be stored, which the
		// caller, refusing its call, releases.
		return audit.Request{}, false, fmt.Errorf("claim request: %w", ctx.Err())
	}
}

// runClaims is the claim batcher: it runs until Close.
func (s *Store) runClaims() {
	defer close(s.claimsDone)
	for {
		select {
		case c := <-s.claims:
			batch := []*claimCall{c}
		gather:
			for len(batch) < maxClaimBatch {
				select {
				case c := <-s.claims:
					batch = append(batch, c)
				default:
					break gather
				}
			}
			s.claimBatch(batch)
		case <-s.claimsStop:
			for {
				select {
				case c := <-s.claims:
					c.done <- claimResult{err: audit.ErrClosed}
				default:
					return
				}
			}
		}
	}
}

// claimBatch stores a batch of claims in one transaction and answers
// each. A key claimed twice in the batch is claimed by the first claim,
// and the others get its row.
func (s *Store) claimBatch(batch []*claimCall) {
	type key struct{ caller, id string }
	first := map[key]*claimCall{}
	var ins []*claimCall
	since := batch[0].since
	for _, c := range batch {
		k := key{column(c.req.Key.Caller), column(c.req.Key.ID)}
		if _, dup := first[k]; !dup {
			first[k] = c
			ins = append(ins, c)
		}
		if c.since.Before(since) {
			since = c.since // the earliest: forget no key another claim keeps
		}
	}
	slices.SortFunc(ins, func(a, b *claimCall) int {
		return cmp.Or(cmp.Compare(column(a.req.Key.Caller), column(b.req.Key.Caller)), cmp.Compare(column(a.req.Key.ID), column(b.req.Key.ID)))
	})
	n := len(ins)
	callers, ids, plans, execs := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	claimed, until := make([]time.Time, n), make([]time.Time, n)
	for i, c := range ins {
		callers[i], ids[i] = column(c.req.Key.Caller), column(c.req.Key.ID)
		plans[i], execs[i] = column(c.req.PlanID), column(c.req.ExecutionID)
		claimed[i], until[i] = c.req.Claimed, c.req.OpenUntil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.writeTimeout)
	defer cancel()
	rows, err := readClaims(s.claimPool.Query(ctx, claimRequests, callers, ids, plans, execs, claimed, until, since, s.cfg.grace.Seconds()))
	for _, c := range batch {
		if err != nil {
			c.done <- claimResult{err: fmt.Errorf("claim request: %w", s.dbError(err))}
			continue
		}
		held, ok := rows[key{column(c.req.Key.Caller), column(c.req.Key.ID)}]
		if !ok {
			c.done <- claimResult{err: fmt.Errorf("claim request: the row of key %s is missing", c.req.Key)}
			continue
		}
		held.Key = c.req.Key
		// Execution ids are random: the row holds this claim if it
		// names this execution.
		c.done <- claimResult{held: held, claimed: held.ExecutionID == column(c.req.ExecutionID)}
	}
}

// readClaims reads the rows claimRequests returns, by key.
func readClaims(rows pgx.Rows, err error) (map[struct{ caller, id string }]audit.Request, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[struct{ caller, id string }]audit.Request{}
	for rows.Next() {
		var caller, id, state string
		var r audit.Request
		if err := rows.Scan(&caller, &id, &r.PlanID, &r.ExecutionID, &state, &r.Answer, &r.Claimed, &r.OpenUntil); err != nil {
			return nil, err
		}
		var ok bool
		if r.State, ok = audit.ParseRequestState(state); !ok {
			return nil, fmt.Errorf("audit_requests holds the unknown state %q", state)
		}
		out[struct{ caller, id string }{caller, id}] = r
	}
	return out, rows.Err()
}

// ReleaseRequest deletes the key's row if executionID holds it running.
func (s *Store) ReleaseRequest(ctx context.Context, key audit.RequestKey, executionID string) error {
	if s.closed.Load() {
		return audit.ErrClosed
	}
	_, err := s.pool.Exec(ctx, `DELETE FROM audit_requests WHERE caller = $1 AND request_id = $2 AND execution_id = $3 AND state = 'running'`,
		column(key.Caller), column(key.ID), column(executionID))
	if err != nil {
		return fmt.Errorf("release request: %w", s.dbError(err))
	}
	return nil
}

// purgeBatch bounds the rows one DELETE of PurgeRequests removes, so that
// a purge after a long pause holds no lock for long.
const purgeBatch = 5000

// PurgeRequests deletes the keys claimed before before, a batch at a time.
func (s *Store) PurgeRequests(ctx context.Context, before time.Time) error {
	if s.closed.Load() {
		return audit.ErrClosed
	}
	for {
		tag, err := s.pool.Exec(ctx, `DELETE FROM audit_requests WHERE ctid = ANY(ARRAY(
			SELECT ctid FROM audit_requests WHERE claimed_at < $1 LIMIT $2))`, before, purgeBatch)
		if err != nil {
			return fmt.Errorf("purge requests: %w", s.dbError(err))
		}
		if tag.RowsAffected() < purgeBatch {
			return nil
		}
	}
}

// queueSettlements adds to an append's batch the statements that settle
// the running claims of the executions whose terminal records carry a
// Request: in the same transaction as the records, so that an execution
// never ends without its key knowing.
func queueSettlements(b *pgx.Batch, recs []audit.Record) {
	var released, unknown, done []string
	var answers [][]byte
	for i := range recs {
		r := &recs[i]
		if r.Request == nil || !r.Terminal() {
			continue
		}
		id := column(r.ExecutionID)
		switch {
		case r.Request.Release:
			released = append(released, id)
		case r.Request.Answer != nil:
			done = append(done, id)
			answers = append(answers, r.Request.Answer)
		default:
			unknown = append(unknown, id)
		}
	}
	if len(released) > 0 {
		b.Queue("DELETE FROM audit_requests WHERE execution_id = ANY($1::text[]) AND state = 'running'", released)
	}
	if len(unknown) > 0 {
		b.Queue("UPDATE audit_requests SET state = 'unknown' WHERE execution_id = ANY($1::text[]) AND state = 'running'", unknown)
	}
	if len(done) > 0 {
		b.Queue(`UPDATE audit_requests r SET state = 'done', answer = u.answer
			FROM unnest($1::text[], $2::bytea[]) AS u(execution_id, answer)
			WHERE r.execution_id = u.execution_id AND r.state = 'running'`, done, answers)
	}
}
