package pgstore_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/internal/pgtest"
)

// fiveRecords appends sequences 1 to 5 in three batches.
func fiveRecords(t *testing.T, s *pgstore.Store) []audit.Record {
	t.Helper()
	recs := mustAppend(t, s, event(received, "e1", "alice"), event(received, "e2", "bob"))
	recs = append(recs, mustAppend(t, s, event(started, "e1", "alice"))...)
	return append(recs, mustAppend(t, s, event(completed, "e1", "alice"), event(failed, "e2", "bob"))...)
}

// render makes the record that would extend head with ev: a validly
// hashed record, for forging a fork.
func render(t *testing.T, head audit.Head, ev audit.Event) audit.Record {
	t.Helper()
	recs, err := audit.RenderRecords(head, time.Now(), []audit.Event{ev})
	require.NoError(t, err)
	return recs[0]
}

// headAt is a head of seq records (with their tree) whose hash is that
// of record hashOf: a forger's starting point.
func headAt(t *testing.T, recs []audit.Record, seq, hashOf int) audit.Head {
	t.Helper()
	tree, err := audit.NextTree(audit.Head{}, recs[:seq])
	require.NoError(t, err)
	return audit.Head{Sequence: uint64(seq), Hash: recs[hashOf-1].Hash, Tree: tree}
}

const insertRow = `INSERT INTO audit_records (sequence, time, type, execution_id, plan_id, user_id, hash, record, tree)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`

func rowArgs(r audit.Record) []any {
	var tree []byte
	for _, h := range r.TreeHashes {
		tree = append(tree, h[:]...)
	}
	return []any{int64(r.Sequence), r.Time, r.Type.String(), r.ExecutionID, r.PlanID, r.UserID, r.Hash[:], r.Line, tree}
}

// TestVerify damages a log behind the store's back in each way a table
// can be damaged and checks that Verify names the first bad sequence. A
// chain recomputed from the damaged record on (every later hash
// rewritten) is not among them: no hash chain without an outside anchor
// can detect that.
func TestVerify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		damage     func(t *testing.T, url string, recs []audit.Record)
		wantSeq    uint64 // 0: intact
		wantReason string
		wantGood   uint64 // records before the damage that check out
	}{
		{name: "intact", damage: func(*testing.T, string, []audit.Record) {}},
		{
			name: "record altered without recomputing its hash",
			damage: func(t *testing.T, url string, _ []audit.Record) {
				pgtest.Exec(t, url, `UPDATE audit_records SET record = convert_to(replace(convert_from(record, 'UTF8'),
					'"user_id":"alice"', '"user_id":"mallo"'), 'UTF8') WHERE sequence = 3`)
			},
			wantSeq: 3, wantReason: "hash mismatch", wantGood: 2,
		},
		{
			name: "column altered",
			damage: func(t *testing.T, url string, _ []audit.Record) {
				pgtest.Exec(t, url, `UPDATE audit_records SET user_id = 'mallory' WHERE sequence = 3`)
			},
			wantSeq: 3, wantReason: "column user_id", wantGood: 2,
		},
		{
			name: "row deleted",
			damage: func(t *testing.T, url string, _ []audit.Record) {
				pgtest.Exec(t, url, `DELETE FROM audit_records WHERE sequence = 3`)
			},
			wantSeq: 3, wantReason: "deleted row", wantGood: 2,
		},
		{
			name: "last row deleted",
			damage: func(t *testing.T, url string, _ []audit.Record) {
				pgtest.Exec(t, url, `DELETE FROM audit_records WHERE sequence = 5`)
			},
			wantSeq: 5, wantReason: "deleted from the end", wantGood: 4,
		},
		{
			name: "row duplicated",
			damage: func(t *testing.T, url string, _ []audit.Record) {
				pgtest.Exec(t, url, `ALTER TABLE audit_records DROP CONSTRAINT audit_records_pkey`)
				pgtest.Exec(t, url, `INSERT INTO audit_records SELECT * FROM audit_records WHERE sequence = 3`)
			},
			wantSeq: 3, wantReason: "duplicated row", wantGood: 3,
		},
		{
			name: "fork: a second record at one sequence with the same previous_hash",
			damage: func(t *testing.T, url string, recs []audit.Record) {
				pgtest.Exec(t, url, `ALTER TABLE audit_records DROP CONSTRAINT audit_records_pkey`)
				fork := render(t, headAt(t, recs, 2, 2), event(completed, "e9", "mallory"))
				pgtest.Exec(t, url, insertRow, rowArgs(fork)...)
			},
			wantSeq: 3, wantReason: "fork", wantGood: 3,
		},
		{
			name: "fork: a later record claims an earlier previous_hash",
			damage: func(t *testing.T, url string, recs []audit.Record) {
				// Record 4 replaced by one that extends record 2, as record
				// 3 does: correctly hashed, columns consistent.
				fork := render(t, headAt(t, recs, 3, 2), event(completed, "e9", "mallory"))
				pgtest.Exec(t, url, `DELETE FROM audit_records WHERE sequence = 4`)
				pgtest.Exec(t, url, insertRow, rowArgs(fork)...)
			},
			wantSeq: 4, wantReason: "previous_hash", wantGood: 3,
		},
		{
			name: "head altered",
			damage: func(t *testing.T, url string, _ []audit.Record) {
				pgtest.Exec(t, url, `UPDATE audit_head SET hash = decode(repeat('ab', 32), 'hex')`)
			},
			wantSeq: 5, wantReason: "audit_head", wantGood: 5,
		},
		{
			name: "head behind the rows",
			damage: func(t *testing.T, url string, recs []audit.Record) {
				pgtest.Exec(t, url, `UPDATE audit_head SET sequence = 4, hash = $1`, recs[3].Hash[:])
			},
			wantSeq: 5, wantReason: "rows after audit_head", wantGood: 5,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			url := pgtest.NewDatabase(t)
			s := open(t, url)
			recs := fiveRecords(t, s)
			tt.damage(t, url, recs)
			res, err := pgstore.Verify(testCtx(t), url)
			if tt.wantSeq == 0 {
				require.NoError(t, err)
				require.Equal(t, uint64(5), res.Records)
				require.Equal(t, audit.FormatHash(recs[4].Hash), res.LastHash)
				return
			}
			var chainErr *audit.ChainError
			require.True(t, errors.As(err, &chainErr), "want a *ChainError, got %v", err)
			require.Equal(t, tt.wantSeq, chainErr.Sequence, chainErr.Reason)
			require.Contains(t, chainErr.Reason, tt.wantReason)
			require.Equal(t, tt.wantGood, res.Records, "the result covers the good records before the damage")
		})
	}
}

// TestVerifyNoSchema: a database without an audit log is unusable input,
// not damage.
func TestVerifyNoSchema(t *testing.T) {
	t.Parallel()
	_, err := pgstore.Verify(testCtx(t), pgtest.NewDatabase(t))
	require.ErrorContains(t, err, "no Stage-4 audit log")
	var chainErr *audit.ChainError
	require.False(t, errors.As(err, &chainErr))
}

// TestListDataLoss: List refuses a record that is not what was written,
// rather than serve it.
func TestListDataLoss(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, damage string }{
		{"record altered", `UPDATE audit_records SET record = convert_to(replace(convert_from(record, 'UTF8'),
			'"user_id":"alice"', '"user_id":"mallo"'), 'UTF8') WHERE sequence = 3`},
		{"column altered to match another filter", `UPDATE audit_records SET execution_id = 'e2' WHERE sequence = 3`},
		{"row deleted in the middle", `DELETE FROM audit_records WHERE sequence = 3`},
		{"rows deleted at the end", `DELETE FROM audit_records WHERE sequence >= 4`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			url := pgtest.NewDatabase(t)
			s := open(t, url)
			fiveRecords(t, s)
			pgtest.Exec(t, url, tt.damage)
			_, err := s.List(testCtx(t), audit.Query{Limit: 10})
			require.ErrorIs(t, err, audit.ErrDataLoss)
		})
	}
}
