package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/stage4/stage4/audit"
)

// DefaultCheckpointInterval is how often, at most, a checkpoint is signed
// while the log grows (--checkpoint-interval).
const DefaultCheckpointInterval = time.Second

// checkpointTimeout bounds one signing, store write included.
const checkpointTimeout = 10 * time.Second

// maxSigningKeyBytes bounds a key file: a note key is about 100 bytes.
const maxSigningKeyBytes = 4096

// LoadSigningKey reads the checkpoint signing key in the file at path
// (--audit-signing-key): a golang.org/x/mod/sumdb/note private key,
// PRIVATE+KEY+<name>+<hash>+<key> (Ed25519), as stage4 audit keygen
// writes it. "" means no key: nil, nil. A file its group or others may
// read or write is refused: whoever holds the key can sign checkpoints of
// a forged log.
func LoadSigningKey(path string) (*audit.SigningKey, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --audit-signing-key: %w", ErrConfig, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("--audit-signing-key: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: --audit-signing-key %s has mode %04o: the key is a secret, "+
			"readable by its owner only (chmod 600 %s)", ErrConfig, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSigningKeyBytes))
	if err != nil {
		return nil, fmt.Errorf("--audit-signing-key: %w", err)
	}
	key, err := audit.ParseSigningKey(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("%w: --audit-signing-key %s does not hold a note signing key "+
			"(PRIVATE+KEY+<name>+<hash>+<key>, made by stage4 audit keygen): %w", ErrConfig, path, err)
	}
	return &key, nil
}

// LoadSigningKeys loads every --audit-signing-key: a log signs each
// checkpoint with all of them (a key rotation's overlap). The keys must
// share their name, the log's origin.
func LoadSigningKeys(paths []string) ([]audit.SigningKey, error) {
	var keys []audit.SigningKey
	for _, p := range paths {
		k, err := LoadSigningKey(p)
		if err != nil {
			return nil, err
		}
		if k != nil {
			keys = append(keys, *k)
		}
	}
	for _, k := range keys[min(1, len(keys)):] {
		if k.Name() != keys[0].Name() {
			return nil, fmt.Errorf("%w: --audit-signing-key: the keys are named %s and %s; every key of a log is named after its origin (stage4 audit keygen ORIGIN)",
				ErrConfig, keys[0].Name(), k.Name())
		}
	}
	return keys, nil
}

// startCheckpoints signs a checkpoint now and then, in the background,
// whenever the log grew, at most every interval; stop ends that and signs
// a last one, so that the final checkpoint covers every record written
// before shutdown. Without a key it does nothing. The first signing
// decides whether Stage-4 starts: a store signed by other keys
// (audit.ErrSigningKeyMismatch) is a configuration error, and a log that
// does not extend its latest checkpoint (audit.ErrIntegrity) is refused,
// before Stage-4 serves: signing on would sign a fork. Later, the log
// halts on those (and says so itself), and this loop stays quiet.
func startCheckpoints(lg *audit.Log, keys []audit.SigningKey, witnessed bool, interval time.Duration, logger *slog.Logger) (stop func(), err error) {
	if len(keys) == 0 {
		logger.Info("no --audit-signing-key: the audit tree is kept and proofs are served, but no checkpoints are signed")
		return func() {}, nil
	}
	if interval <= 0 {
		interval = DefaultCheckpointInterval
	}
	sign := func() {
		ctx, cancel := context.WithTimeout(context.Background(), checkpointTimeout)
		defer cancel()
		th, signed, err := lg.SignCheckpoint(ctx)
		switch {
		case lg.Halted() != nil:
			// Reported once, at ERROR, when the log halted.
		case err != nil:
			logger.Warn("signing an audit checkpoint failed; will retry", "error", err)
		case signed:
			logger.Debug("signed an audit checkpoint", "tree_size", th.Size, "root", th.Root.String())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkpointTimeout)
	th, _, err := lg.SignCheckpoint(ctx)
	cancel()
	switch {
	case errors.Is(err, audit.ErrSigningKeyMismatch):
		return nil, fmt.Errorf("%w: audit checkpoint: %w", ErrConfig, err)
	case errors.Is(err, audit.ErrIntegrity), errors.Is(err, audit.ErrCheckpointMismatch):
		return nil, fmt.Errorf("audit checkpoint: %w; restore the log, or archive the checkpoint (and tell the auditors why) to begin again", err)
	case err != nil:
		logger.Warn("signing an audit checkpoint failed; will retry", "error", err)
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = fmt.Sprintf("%s+%08x", k.Name(), k.KeyHash())
	}
	logger.Info("signing audit checkpoints", "origin", keys[0].Name(), "keys", strings.Join(ids, ","),
		"witnessed", witnessed, "interval", interval.String(), "tree_size", th.Size)

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			select {
			case <-done:
				return
			case <-ticker.C:
				sign()
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
		sign()
	}, nil
}
