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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
	if err := checkSecretFile("--audit-signing-key", path, fi); err != nil {
		return nil, err
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
func startCheckpoints(lg *audit.Log, keys []audit.SigningKey, witnessed bool, interval time.Duration, reg prometheus.Registerer, logger *slog.Logger) (stop func(), err error) {
	if len(keys) == 0 {
		logger.Info("no --audit-signing-key: the audit tree is kept and proofs are served, but no checkpoints are signed")
		return func() {}, nil
	}
	if interval <= 0 {
		interval = DefaultCheckpointInterval
	}
	m := newCheckpointMetrics()
	if err := m.register(reg); err != nil {
		return nil, fmt.Errorf("register checkpoint metrics: %w", err)
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
			return
		case signed:
			logger.Debug("signed an audit checkpoint", "tree_size", th.Size, "root", th.Root.String())
		}
		m.covered(th.Size)
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
	default:
		m.covered(th.Size)
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

// checkpointMetrics say whether auditors can get a checkpoint of the whole
// log: stage4_audit_checkpoint_age_seconds grows only while signing
// rounds fail (a log that does not grow needs no new checkpoint: the one
// it has covers it), and stage4_audit_checkpoint_tree_size is the size the
// latest round found covered.
type checkpointMetrics struct {
	start     time.Time
	coveredAt atomic.Int64 // unix nanoseconds of the last round that succeeded; 0 before
	size      atomic.Uint64
}

func newCheckpointMetrics() *checkpointMetrics { return &checkpointMetrics{start: time.Now()} }

// covered notes a round that left the durable tree of size records
// covered by a signed checkpoint.
func (m *checkpointMetrics) covered(size uint64) {
	m.coveredAt.Store(time.Now().UnixNano())
	m.size.Store(size)
}

func (m *checkpointMetrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "checkpoint_age_seconds",
			Help: "Seconds since a signing round last found the durable audit log covered by a signed checkpoint " +
				"(signed then, or already signed); since start when none has. It grows while checkpoints cannot be signed.",
		}, func() float64 {
			at := m.start
			if n := m.coveredAt.Load(); n != 0 {
				at = time.Unix(0, n)
			}
			return time.Since(at).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "checkpoint_tree_size",
			Help: "Records in the tree of the latest signed checkpoint, as the last successful signing round found it.",
		}, func() float64 { return float64(m.size.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
