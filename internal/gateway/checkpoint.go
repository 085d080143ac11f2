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

	"golang.org/x/mod/sumdb/note"

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
// writes it. "" means no key: nil, nil. A file others than its owner may
// read is refused (see checkSecretFile): whoever holds the key can sign
// checkpoints of a forged log.
func LoadSigningKey(path string) (note.Signer, error) {
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
	if err := checkSecretFile("--audit-signing-key", path, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSigningKeyBytes))
	if err != nil {
		return nil, fmt.Errorf("--audit-signing-key: %w", err)
	}
	signer, err := note.NewSigner(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("%w: --audit-signing-key %s does not hold a note signing key "+
			"(PRIVATE+KEY+<name>+<hash>+<key>, made by stage4 audit keygen): %w", ErrConfig, path, err)
	}
	return signer, nil
}

// startCheckpoints signs a checkpoint now and then, in the background,
// whenever the log grew, at most every interval; stop ends that and signs
// a last one, so that the final checkpoint covers every record written
// before shutdown. Without a signer it does nothing. A log that does not
// extend its latest checkpoint (audit.ErrCheckpointMismatch) is refused
// here, before Stage-4 serves: signing on would sign a fork.
func startCheckpoints(lg *audit.Log, signer note.Signer, interval time.Duration, logger *slog.Logger) (stop func(), err error) {
	if signer == nil {
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
		case err != nil:
			logger.Warn("signing an audit checkpoint failed; will retry", "error", err)
		case signed:
			logger.Debug("signed an audit checkpoint", "tree_size", th.Size, "root", th.Root.String())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkpointTimeout)
	th, _, err := lg.SignCheckpoint(ctx)
	cancel()
	if errors.Is(err, audit.ErrCheckpointMismatch) {
		return nil, fmt.Errorf("audit checkpoint: %w; restore the log, or archive the checkpoint (and tell the auditors why) to begin again", err)
	}
	if err != nil {
		logger.Warn("signing an audit checkpoint failed; will retry", "error", err)
	}
	logger.Info("signing audit checkpoints", "origin", signer.Name(), "key_hash", fmt.Sprintf("%08x", signer.KeyHash()),
		"interval", interval.String(), "tree_size", th.Size)

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
