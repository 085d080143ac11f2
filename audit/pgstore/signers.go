package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/stage4/stage4/audit"
)

// SaveCosigned keeps checkpoint in audit_cosigned unless a replica stored
// a cosigned one for a larger tree.
func (s *Store) SaveCosigned(ctx context.Context, size uint64, checkpoint []byte) error {
	if s.closed.Load() {
		return audit.ErrClosed
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO audit_cosigned (id, tree_size, checkpoint, saved_at) VALUES (1, $1, $2, now())
		ON CONFLICT (id) DO UPDATE SET tree_size = excluded.tree_size, checkpoint = excluded.checkpoint, saved_at = excluded.saved_at
		WHERE audit_cosigned.tree_size <= excluded.tree_size`, int64(size), checkpoint)
	if err != nil {
		return fmt.Errorf("save cosigned checkpoint: %w", s.dbError(err))
	}
	return nil
}

// LoadCosigned reads the latest cosigned checkpoint of any replica.
func (s *Store) LoadCosigned(ctx context.Context) ([]byte, error) {
	if s.closed.Load() {
		return nil, audit.ErrClosed
	}
	var cp []byte
	err := s.pool.QueryRow(ctx, "SELECT checkpoint FROM audit_cosigned WHERE id = 1").Scan(&cp)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, audit.ErrNoCheckpoint
	}
	if err != nil {
		return nil, fmt.Errorf("load cosigned checkpoint: %w", s.dbError(err))
	}
	return cp, nil
}

// VerifierKeys reads the pinned verifier keys from audit_signers.
func (s *Store) VerifierKeys(ctx context.Context) ([]string, error) {
	if s.closed.Load() {
		return nil, audit.ErrClosed
	}
	var keys []string
	err := s.pool.QueryRow(ctx, "SELECT verifier_keys FROM audit_signers WHERE id = 1").Scan(&keys)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pinned verifier keys: %w", s.dbError(err))
	}
	slices.Sort(keys)
	return keys, nil
}

// PinVerifierKeys replaces the pinned keys with keys if those pinned are
// old, in one statement (the row is the compare-and-swap's lock), and
// returns the keys pinned afterwards.
func (s *Store) PinVerifierKeys(ctx context.Context, old, keys []string) ([]string, error) {
	if s.closed.Load() {
		return nil, audit.ErrClosed
	}
	var err error
	if len(old) == 0 {
		_, err = s.pool.Exec(ctx, `INSERT INTO audit_signers (id, verifier_keys, pinned_at) VALUES (1, $1, now())
			ON CONFLICT (id) DO NOTHING`, keys)
	} else {
		_, err = s.pool.Exec(ctx, `UPDATE audit_signers SET verifier_keys = $1, pinned_at = now()
			WHERE id = 1 AND verifier_keys = $2`, keys, old)
	}
	if err != nil {
		return nil, fmt.Errorf("pin verifier keys: %w", s.dbError(err))
	}
	return s.VerifierKeys(ctx)
}
