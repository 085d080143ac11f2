package pgstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/stage4/stage4/audit"
)

// claimable selects the open executions this replica may close as
// interrupted. Parameters: $1 this instance, $2 this replica's name, $3
// whether this process holds the name's advisory lock, $4 the grace
// period in seconds.
//
// An instance is gone when it has no heartbeat newer than the grace
// period, or when it has this replica's name while this process holds
// the name's lock (it is an earlier process of this replica). An
// execution may be taken when nobody live has claimed it, and either its
// owner was an earlier process of this replica, or its deadline plus the
// grace period has passed and its owner is gone or is this very process.
// The owner's own expired executions are those whose terminal event
// could not be stored (the database was down when the call ended): the
// call is over, since a call ends by its deadline, and only a close by
// the owner or a successor would otherwise end them. An execution without
// a deadline (open_until NULL) is never taken by another replica's name:
// only by its own replica's next process.
const claimable = `
	(o.claimed_by IS NULL OR (o.claimed_by <> $1 AND NOT EXISTS (
		SELECT 1 FROM audit_replicas r WHERE r.instance_id = o.claimed_by
			AND r.last_seen >= now() - make_interval(secs => $4)
			AND NOT ($3 AND r.name = $2))))
	AND (($3 AND o.owner_name = $2 AND o.owner_instance <> $1)
		OR (o.open_until < now() - make_interval(secs => $4) AND (o.owner_instance = $1 OR NOT EXISTS (
			SELECT 1 FROM audit_replicas r WHERE r.instance_id = o.owner_instance
				AND r.last_seen >= now() - make_interval(secs => $4)))))`

// Interrupted claims and returns, in the order of their first event, the
// open executions this replica must now close with EXECUTION_FAILED of
// phase "interrupted":
//
//   - those of an earlier process under this replica's name (it
//     restarted), at once, provided this process holds the name's
//     advisory lock, which no live process of that name can hold;
//   - those of any replica whose deadline (the OpenUntil of their last
//     event) and the grace period have passed and whose owner has not
//     sent a heartbeat (Ping) for the grace period, or is this process
//     (its terminal event was lost to a database outage).
//
// A claim is exactly-once across replicas: the candidates are locked
// FOR UPDATE SKIP LOCKED, then claimed with a second statement that
// checks the conditions again on a fresh snapshot while the rows are
// locked. The terminal record the claimer appends deletes the open row.
// A claim whose claimer stops sending heartbeats before that may be
// claimed again by another replica.
func (s *Store) Interrupted(ctx context.Context) ([]audit.OpenExecution, error) {
	if s.closed.Load() {
		return nil, audit.ErrClosed
	}
	locked := s.lockName(ctx)
	args := []any{s.instance, s.cfg.name, locked, s.cfg.grace.Seconds()}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("find interrupted executions: %w", s.dbError(err))
	}
	defer tx.Rollback(context.Background())
	ids, err := collect(tx.Query(ctx, `SELECT o.execution_id FROM audit_open o WHERE `+claimable+`
		ORDER BY o.sequence FOR UPDATE OF o SKIP LOCKED`, args...))
	if err != nil {
		return nil, fmt.Errorf("find interrupted executions: %w", s.dbError(err))
	}
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, `UPDATE audit_open o SET claimed_by = $1, claimed_at = now()
		WHERE o.execution_id = ANY($5::text[]) AND `+claimable+`
		RETURNING o.execution_id, o.plan_id, o.user_id, o.last_type, o.sequence`, append(args, ids)...)
	if err != nil {
		return nil, fmt.Errorf("claim interrupted executions: %w", s.dbError(err))
	}
	out, err := scanOpen(rows)
	if err != nil {
		return nil, fmt.Errorf("claim interrupted executions: %w", s.dbError(err))
	}
	if err := tx.Commit(ctx); err != nil {
		// Not claimed, or (a lost COMMIT) perhaps claimed: such a claim
		// stays ours, unclosed, until this process stops and the next
		// claimer finds it expired. Rare, and never a double close.
		return nil, fmt.Errorf("claim interrupted executions: %w", s.dbError(err))
	}
	return out, nil
}

// Claim claims this process's own open executions among ids, unless
// another live process claimed them (a replica's sweep, which takes an
// owner's executions only once the owner's heartbeat went stale): one
// UPDATE, whose WHERE PostgreSQL checks again on the row it locks, so that
// of a claim and a sweep racing for one execution exactly one wins.
func (s *Store) Claim(ctx context.Context, ids []string) ([]audit.OpenExecution, error) {
	if s.closed.Load() {
		return nil, audit.ErrClosed
	}
	if len(ids) == 0 {
		return nil, nil
	}
	mapped := make([]string, len(ids))
	for i, id := range ids {
		mapped[i] = column(id)
	}
	rows, err := s.pool.Query(ctx, `UPDATE audit_open o SET claimed_by = $1, claimed_at = now()
		WHERE o.execution_id = ANY($2::text[]) AND (o.owner_instance = $1 OR o.claimed_by = $1)
		AND (o.claimed_by IS NULL OR o.claimed_by = $1 OR NOT EXISTS (
			SELECT 1 FROM audit_replicas r WHERE r.instance_id = o.claimed_by
				AND r.last_seen >= now() - make_interval(secs => $3)))
		RETURNING o.execution_id, o.plan_id, o.user_id, o.last_type, o.sequence`, s.instance, mapped, s.cfg.grace.Seconds())
	if err != nil {
		return nil, fmt.Errorf("claim executions: %w", s.dbError(err))
	}
	out, err := scanOpen(rows)
	if err != nil {
		return nil, fmt.Errorf("claim executions: %w", err)
	}
	return out, nil
}

// scanOpen reads the rows of a claim, in the order of their first event.
func scanOpen(rows pgx.Rows) ([]audit.OpenExecution, error) {
	defer rows.Close()
	var out []audit.OpenExecution
	for rows.Next() {
		var e audit.OpenExecution
		var last string
		var seq int64
		if err := rows.Scan(&e.ExecutionID, &e.PlanID, &e.UserID, &last, &seq); err != nil {
			return nil, err
		}
		e.Sequence = uint64(seq)
		if t, ok := audit.ParseEventType(last); ok && t == audit.PlanReceived {
			e.LastType = t
		} else {
			e.LastType = audit.ExecutionStarted // the one that says the plan may have run
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b audit.OpenExecution) int { return cmp.Compare(a.Sequence, b.Sequence) })
	return out, nil
}

func collect(rows pgx.Rows, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
