package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// ReadHashes reads stored hashes of the Merkle tree from the tree column
// of the records that added them, by primary key. Rows are written once
// and never change, so a hash of a durable tree read now is the hash that
// was committed; one that is missing was deleted (audit.ErrDataLoss), or
// lies beyond the tree.
func (s *Store) ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	if s.closed.Load() {
		return nil, audit.ErrClosed
	}
	return readHashes(ctx, s.pool, indexes, s.dbError)
}

// querier is what readHashes needs of a pool or a connection.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func readHashes(ctx context.Context, q querier, indexes []int64, dbError func(error) error) ([]tlog.Hash, error) {
	seqs := make([]int64, len(indexes))
	for i, x := range indexes {
		if x < 0 {
			return nil, fmt.Errorf("tree hash %d: a negative index", x)
		}
		seqs[i], _ = locateHash(x)
	}
	rows, err := q.Query(ctx, "SELECT sequence, tree FROM audit_records WHERE sequence = ANY($1::bigint[])", seqs)
	if err != nil {
		return nil, fmt.Errorf("read tree hashes: %w", dbError(err))
	}
	trees := make(map[int64][]byte, len(indexes))
	for rows.Next() {
		var seq int64
		var tree []byte
		if err := rows.Scan(&seq, &tree); err != nil {
			return nil, fmt.Errorf("read tree hashes: %w", dbError(err))
		}
		trees[seq] = tree
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read tree hashes: %w", dbError(err))
	}
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		seq, pos := locateHash(x)
		tree, ok := trees[seq]
		if !ok {
			return nil, fmt.Errorf("%w: tree hash %d: no record %d: it was deleted", audit.ErrIntegrity, x, seq)
		}
		if len(tree) < (pos+1)*tlog.HashSize {
			return nil, fmt.Errorf("%w: tree hash %d: record %d holds %d bytes of tree hashes", audit.ErrDataLoss, x, seq, len(tree))
		}
		copy(out[i][:], tree[pos*tlog.HashSize:])
	}
	return out, nil
}

// locateHash returns the record that stored the hash at a stored index,
// and the hash's place among that record's tree hashes: the hash of the
// subtree of 2^level leaves at position n is added by the subtree's last
// leaf, as the level-th of its hashes (its leaf hash is the 0th).
func locateHash(index int64) (seq int64, pos int) {
	level, n := tlog.SplitStoredHashIndex(index)
	// The subtree's last leaf is (n+1)*2^level - 1, its sequence one more.
	return (n + 1) << level, level
}

// DurableHead reads the head and then makes it durable: a transaction
// that reads audit_head and refreshes this replica's heartbeat, committed
// synchronously. Its commit record follows in the WAL every commit the
// read saw (batches committed with synchronous_commit off among them),
// and a synchronous commit returns only once the WAL up to it is flushed,
// so the head it returns cannot be lost to a crash of the database.
func (s *Store) DurableHead(ctx context.Context) (audit.Head, error) {
	if s.closed.Load() {
		return audit.Head{}, audit.ErrClosed
	}
	var head audit.Head
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
			return err
		}
		res, err := tx.Conn().PgConn().Exec(ctx, selectHead).ReadAll()
		if err != nil {
			return err
		}
		if head, err = parseHead(res[0]); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, upsertHeartbeat, s.instance, s.cfg.name)
		return err
	})
	if err != nil {
		return audit.Head{}, fmt.Errorf("read the durable head: %w", s.dbError(err))
	}
	// The head may only move forward from here: a later append checks it
	// (see integrity.go).
	s.see(head)
	return head, nil
}

// SaveCheckpoint keeps checkpoint in audit_checkpoint unless a replica
// stored one for a larger tree.
func (s *Store) SaveCheckpoint(ctx context.Context, size uint64, checkpoint []byte) error {
	if s.closed.Load() {
		return audit.ErrClosed
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO audit_checkpoint (id, tree_size, checkpoint, signed_at) VALUES (1, $1, $2, now())
		ON CONFLICT (id) DO UPDATE SET tree_size = excluded.tree_size, checkpoint = excluded.checkpoint, signed_at = excluded.signed_at
		WHERE audit_checkpoint.tree_size <= excluded.tree_size`, int64(size), checkpoint)
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", s.dbError(err))
	}
	return nil
}

// LoadCheckpoint reads the latest checkpoint of any replica.
func (s *Store) LoadCheckpoint(ctx context.Context) ([]byte, error) {
	if s.closed.Load() {
		return nil, audit.ErrClosed
	}
	var cp []byte
	err := s.pool.QueryRow(ctx, "SELECT checkpoint FROM audit_checkpoint WHERE id = 1").Scan(&cp)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, audit.ErrNoCheckpoint
	}
	if err != nil {
		return nil, fmt.Errorf("load checkpoint: %w", s.dbError(err))
	}
	return cp, nil
}

// Reader reads the records and tree hashes of the log in a database
// without opening a store (no schema change, no heartbeat): for tools
// that prove a record offline. Whatever it returns is to be checked
// against a signed checkpoint, never trusted.
type Reader struct {
	conn *pgx.Conn
}

// OpenReader connects to the database at rawURL.
func OpenReader(ctx context.Context, rawURL string) (*Reader, error) {
	if !IsURL(rawURL) {
		return nil, errors.New("read audit store: the URL must start with postgres:// or postgresql://")
	}
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("read audit store: %w", err)
	}
	applyDefaults(cfg)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("read audit store %s: %w", audit.RedactLocation(rawURL), dbErrorNoReset(err))
	}
	return &Reader{conn: conn}, nil
}

// Record returns the bytes of the record of sequence seq.
func (r *Reader) Record(ctx context.Context, seq uint64) ([]byte, error) {
	var record []byte
	err := r.conn.QueryRow(ctx, "SELECT record FROM audit_records WHERE sequence = $1", int64(seq)).Scan(&record)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("the log holds no record %d", seq)
	}
	if err != nil {
		return nil, fmt.Errorf("read record %d: %w", seq, dbErrorNoReset(err))
	}
	return record, nil
}

// ReadHashes reads stored hashes from the records' tree column.
func (r *Reader) ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	return readHashes(ctx, r.conn, indexes, dbErrorNoReset)
}

// Close disconnects.
func (r *Reader) Close() error { return r.conn.Close(context.Background()) }
