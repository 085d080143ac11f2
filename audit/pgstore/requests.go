package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stage4/stage4/audit"
)

// claimRequest inserts a claim, or takes over the key's row when it is
// forgotten: claimed before since ($7), or running past its open_until
// and the grace period ($8 seconds) while its execution is not open (it
// never reached the log). ON CONFLICT DO UPDATE locks the conflicting row
// whether or not the WHERE holds, also a row committed after this
// statement's snapshot, so the SELECT after it, in the same transaction,
// reads the row that holds the key now, unchanged until COMMIT.
const claimRequest = `INSERT INTO audit_requests AS r (caller, request_id, plan_id, execution_id, state, claimed_at, open_until)
VALUES ($1, $2, $3, $4, 'running', $5, $6)
ON CONFLICT (caller, request_id) DO UPDATE SET
	plan_id = excluded.plan_id, execution_id = excluded.execution_id, state = 'running', answer = NULL,
	claimed_at = excluded.claimed_at, open_until = excluded.open_until
WHERE r.claimed_at < $7
	OR (r.state = 'running' AND r.open_until < now() - make_interval(secs => $8)
		AND NOT EXISTS (SELECT 1 FROM audit_open o WHERE o.execution_id = r.execution_id))`

const selectRequest = `SELECT plan_id, execution_id, state, answer, claimed_at, open_until
FROM audit_requests WHERE caller = $1 AND request_id = $2`

// ClaimRequest claims req.Key in one pipelined round trip. The transaction
// commits without waiting for its WAL flush (synchronous_commit off): the
// claim must be durable before Stage-3 is called, and the synchronous
// commit of the execution's EXECUTION_STARTED, which follows it, flushes
// the WAL up to it, the WAL being one sequence. A crash of the database
// before that can lose the claim, and then also the execution, which has
// not reached Stage-3.
func (s *Store) ClaimRequest(ctx context.Context, req audit.Request, since time.Time) (audit.Request, bool, error) {
	if s.closed.Load() {
		return audit.Request{}, false, audit.ErrClosed
	}
	caller, id := column(req.Key.Caller), column(req.Key.ID)
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit = off")
	b.Queue(claimRequest, caller, id, column(req.PlanID), column(req.ExecutionID), req.Claimed, req.OpenUntil, since, s.cfg.grace.Seconds())
	b.Queue(selectRequest, caller, id)
	b.Queue("COMMIT")
	br := s.pool.SendBatch(ctx, b)
	held, err := readClaim(br, req.Key)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return audit.Request{}, false, fmt.Errorf("claim request: %w", s.dbError(err))
	}
	// Execution ids are random: the row holds this claim if it names this
	// execution.
	return held, held.ExecutionID == column(req.ExecutionID), nil
}

func readClaim(br pgx.BatchResults, key audit.RequestKey) (audit.Request, error) {
	held := audit.Request{Key: key}
	for range 3 { // BEGIN, SET, INSERT
		if _, err := br.Exec(); err != nil {
			return held, err
		}
	}
	var state string
	if err := br.QueryRow().Scan(&held.PlanID, &held.ExecutionID, &state, &held.Answer, &held.Claimed, &held.OpenUntil); err != nil {
		return held, err
	}
	tag, err := br.Exec()
	if err != nil {
		return held, err
	}
	if tag.String() != "COMMIT" {
		return held, errors.New("the transaction was rolled back")
	}
	var ok bool
	if held.State, ok = audit.ParseRequestState(state); !ok {
		return held, fmt.Errorf("audit_requests holds the unknown state %q", state)
	}
	return held, nil
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
