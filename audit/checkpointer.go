package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// checkpointer signs checkpoints of the log's durable tree, and never one
// that does not extend what it, or any process of its store, signed
// before: at every signing it proves, from the store's stored hashes and
// against the signed roots, that the tree it is about to sign extends the
// store's latest checkpoint and the largest one this process saw (kept in
// memory, where an edit of the store cannot move it along). It keeps the
// store's signing identity (Store rule 12) and, with a Cosigner, gets
// the checkpoints cosigned by witnesses. Any disagreement halts the log.
type checkpointer struct {
	log      *Log
	keys     []SigningKey
	pins     []string // pinsOf(keys)
	cosigner Cosigner

	mu      sync.Mutex
	started bool // the first signing checked the pinned keys
	// seen is the largest checkpoint this process signed or found in the
	// store: every later tree must extend it, whatever the store says.
	seen *Checkpoint
}

func newCheckpointer(l *Log, keys []SigningKey, cs Cosigner) *checkpointer {
	return &checkpointer{log: l, keys: keys, pins: pinsOf(keys), cosigner: cs}
}

// maxBehindRetries bounds the signings of one SignCheckpoint that a
// witness ahead of the checkpoint (another replica's newer one) causes.
const maxBehindRetries = 2

// SignCheckpoint signs and stores a checkpoint of the durable tree when it
// grew since the latest stored checkpoint (or none is stored yet), and
// returns the tree and whether it signed. Before signing it checks that
// the store is signed by this log's keys (ErrSigningKeyMismatch, at the
// first call only a refusal, later a halt) and that the durable tree
// extends the store's latest checkpoint and the largest one this process
// has seen (an error wrapping ErrIntegrity and ErrCheckpointMismatch
// otherwise, and the log halts: signing on would sign a fork of what
// auditors hold). With a Cosigner it then gets the latest checkpoint
// cosigned, unless it is already. The gateway calls it periodically and
// once more at shutdown.
func (l *Log) SignCheckpoint(ctx context.Context) (TreeHead, bool, error) {
	return l.cp.sign(ctx)
}

// WitnessAheadError is what a Cosigner returns when a witness holds a tree
// larger than the checkpoint it was asked to cosign, and nothing worse:
// another process of the store may have had a newer checkpoint cosigned
// meanwhile. The log signs its durable tree again when that reaches Size,
// and halts when it does not (a rollback).
type WitnessAheadError struct {
	// Witness names the witness; Size is the size of the tree it holds.
	Witness string
	Size    uint64
}

func (e *WitnessAheadError) Error() string {
	return fmt.Sprintf("witness %s holds a tree of %d records, more than the checkpoint's", e.Witness, e.Size)
}

func (c *checkpointer) sign(ctx context.Context) (TreeHead, bool, error) {
	if len(c.keys) == 0 {
		return TreeHead{}, false, ErrNoSigningKey
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	signedAny := false
	for try := 0; ; try++ {
		th, signed, latest, err := c.signOnce(ctx)
		signedAny = signedAny || signed
		if err != nil || c.cosigner == nil || latest == nil {
			return th, signedAny, err
		}
		err = c.cosign(ctx, latest)
		var ahead *WitnessAheadError
		if !errors.As(err, &ahead) {
			return th, signedAny, err
		}
		// A witness holds a larger tree. The store's durable tree must
		// reach it (another replica signed it, over records of this
		// store); then sign that and ask again. A tree that does not
		// reach it was rolled back.
		now, terr := c.log.Tree(ctx)
		if terr != nil {
			return th, signedAny, terr
		}
		if now.Size < ahead.Size {
			return th, signedAny, c.fail(fmt.Errorf("witness %s cosigned a tree of %d records, and this log's durable tree holds %d: the log was rolled back",
				ahead.Witness, ahead.Size, now.Size))
		}
		if try == maxBehindRetries {
			return th, signedAny, fmt.Errorf("cosign: %w (and again after signing anew)", ahead)
		}
	}
}

// signOnce checks the store and signs its durable tree if it grew. It
// returns the tree, whether it signed, and the store's latest checkpoint
// (the one it signed, or another process's larger one), nil when there is
// none. The caller holds mu.
func (c *checkpointer) signOnce(ctx context.Context) (TreeHead, bool, []byte, error) {
	if err := c.log.haltErr(); err != nil {
		return TreeHead{}, false, nil, err
	}
	pinned, err := c.log.store.VerifierKeys(ctx)
	if err != nil {
		return TreeHead{}, false, nil, fmt.Errorf("read the pinned verifier keys: %w", err)
	}
	if len(pinned) > 0 && !shareAny(pinned, c.pins) {
		return TreeHead{}, false, nil, c.keyMismatch(fmt.Sprintf("the store pins the checkpoint verifier keys %s", describePins(pinned)))
	}
	// The stored checkpoint before the tree: it was signed over a durable
	// tree of this store, which the tree read next reaches.
	storedMsg, stored, err := c.loadStored(ctx, pinned)
	if err != nil {
		return TreeHead{}, false, nil, err
	}
	c.started = true
	th, err := c.log.Tree(ctx)
	if err != nil {
		return th, false, nil, err
	}
	if stored != nil {
		if c.seen != nil && stored.Size < c.seen.Size {
			return th, false, nil, c.fail(fmt.Errorf("%w: the store's latest checkpoint names %d records, but this process saw one of %d: the checkpoint was rolled back",
				ErrCheckpointMismatch, stored.Size, c.seen.Size))
		}
		if err := c.extends(ctx, th, stored, "the store's latest checkpoint"); err != nil {
			return th, false, nil, err
		}
	}
	if c.seen != nil && (stored == nil || c.seen.TreeHead != stored.TreeHead) {
		if err := c.extends(ctx, th, c.seen, "the largest checkpoint this process saw"); err != nil {
			return th, false, nil, err
		}
	}
	if stored != nil && (c.seen == nil || stored.Size > c.seen.Size) {
		c.seen = stored
	}
	if c.seen != nil && th.Size <= c.seen.Size {
		return th, false, storedMsg, nil
	}
	msg, err := c.signTree(th)
	if err != nil {
		return th, false, nil, err
	}
	if err := c.pin(ctx, pinned); err != nil {
		return th, false, nil, err
	}
	if err := c.log.store.SaveCheckpoint(ctx, th.Size, msg); err != nil {
		return th, false, nil, fmt.Errorf("save checkpoint: %w", err)
	}
	c.seen = &Checkpoint{Origin: c.keys[0].Name(), TreeHead: th}
	return th, true, msg, nil
}

// signTree signs a checkpoint of th with every key.
func (c *checkpointer) signTree(th TreeHead) ([]byte, error) {
	signers := make([]note.Signer, len(c.keys))
	for i := range c.keys {
		signers[i] = c.keys[i].Signer
	}
	msg, err := note.Sign(&note.Note{Text: FormatCheckpoint(c.keys[0].Name(), th)}, signers...)
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	return msg, nil
}

// pin makes the store pin this process's keys, if it does not already:
// they share a key with those pinned (checked), so this is a rotation's
// step, which every process holding a pinned key may take.
func (c *checkpointer) pin(ctx context.Context, pinned []string) error {
	for range 3 {
		if sameSet(pinned, c.pins) {
			return nil
		}
		if len(pinned) > 0 && !shareAny(pinned, c.pins) {
			return c.keyMismatch(fmt.Sprintf("another process pinned the checkpoint verifier keys %s meanwhile", describePins(pinned)))
		}
		var err error
		if pinned, err = c.log.store.PinVerifierKeys(ctx, pinned, c.pins); err != nil {
			return fmt.Errorf("pin the checkpoint verifier keys: %w", err)
		}
	}
	if sameSet(pinned, c.pins) {
		return nil
	}
	return errors.New("pin the checkpoint verifier keys: other processes of the store keep pinning other keys")
}

// keyMismatch is an ErrSigningKeyMismatch: at the first signing a refusal
// (serve does not start), later a halt.
func (c *checkpointer) keyMismatch(what string) error {
	err := fmt.Errorf("%w: %s, and this Stage-4 signs with %s; a key is rotated by signing with the old and the new key together first (docs/AUDIT_LOG.md)",
		ErrSigningKeyMismatch, what, describePins(c.pins))
	if !c.started {
		return err
	}
	return c.fail(err)
}

// loadStored reads the store's latest checkpoint and checks that it is
// signed by a pinned key or one of this process's, and parses it. Without
// a checkpoint it returns nils.
func (c *checkpointer) loadStored(ctx context.Context, pinned []string) ([]byte, *Checkpoint, error) {
	msg, err := c.log.store.LoadCheckpoint(ctx)
	if errors.Is(err, ErrNoCheckpoint) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load checkpoint: %w", err)
	}
	cp, err := ParseCheckpoint(msg)
	if err != nil {
		return nil, nil, c.fail(fmt.Errorf("%w: the stored checkpoint: %w", ErrCheckpointMismatch, err))
	}
	if err := c.checkSigners(msg, cp, pinned); err != nil {
		return nil, nil, err
	}
	return msg, &cp, nil
}

// checkSigners checks the stored checkpoint's signatures: it must carry a
// valid signature by a key this process or the store knows. In a store
// that pins no key yet (a log signed before keys were pinned), a
// checkpoint signed by other keys than this process's names the key that
// signed the log so far: a refusal like a pinned key's.
func (c *checkpointer) checkSigners(msg []byte, cp Checkpoint, pinned []string) error {
	var verifiers []note.Verifier
	known := map[string]bool{}
	for _, vkey := range append(pinsOf(c.keys), pinned...) {
		if v, err := note.NewVerifier(vkey); err == nil && !known[vkey] {
			known[vkey] = true
			verifiers = append(verifiers, v)
		}
	}
	n, err := note.Open(msg, note.VerifierList(verifiers...))
	var unverified *note.UnverifiedNoteError
	var invalid *note.InvalidSignatureError
	switch {
	case err == nil:
		if n.Sigs[0].Name != cp.Origin {
			return c.fail(fmt.Errorf("%w: the stored checkpoint's origin %q is not its signer's name %q", ErrCheckpointMismatch, cp.Origin, n.Sigs[0].Name))
		}
		return nil
	case errors.As(err, &invalid):
		return c.fail(fmt.Errorf("%w: the stored checkpoint's signature by %s does not verify", ErrCheckpointMismatch, keyID(invalid.Name, invalid.Hash)))
	case !errors.As(err, &unverified):
		return c.fail(fmt.Errorf("%w: the stored checkpoint: %w", ErrCheckpointMismatch, err))
	}
	// No signature by a key with a verifier here: those given as bare
	// signers (WithCheckpointSigner) are known by name and hash only.
	var by []string
	for _, s := range unverified.Note.UnverifiedSigs {
		id := keyID(s.Name, s.Hash)
		for _, k := range c.keys {
			if k.VerifierKey == "" && id == keyID(k.Name(), k.KeyHash()) {
				return nil
			}
		}
		by = append(by, id)
	}
	what := fmt.Sprintf("the store's latest checkpoint is signed by %v", by)
	if len(pinned) > 0 {
		return c.fail(fmt.Errorf("%w: %s, none of the pinned keys %s", ErrCheckpointMismatch, what, describePins(pinned)))
	}
	return c.keyMismatch(what)
}

// extends checks that th, the durable tree, extends cp, a checkpoint the
// log must never fork from: the consistency proof from the store's stored
// hashes must lead from cp's signed root to th's root (which comes from the
// store's head, not from those hashes). A failure halts the log.
func (c *checkpointer) extends(ctx context.Context, th TreeHead, cp *Checkpoint, what string) error {
	switch {
	case cp.Size > th.Size:
		return c.fail(fmt.Errorf("%w: %s names %d records, the log's durable tree holds %d: records were removed",
			ErrCheckpointMismatch, what, cp.Size, th.Size))
	case cp.Size == th.Size:
		if cp.Root != th.Root {
			return c.fail(fmt.Errorf("%w: the tree of the log's %d records has root %s, %s signs %s",
				ErrCheckpointMismatch, th.Size, th.Root, what, cp.Root))
		}
		return nil
	case cp.Size == 0:
		return nil
	}
	proof, err := tlog.ProveTree(int64(th.Size), int64(cp.Size), c.log.hashReader(ctx))
	if errors.Is(err, ErrDataLoss) {
		return c.fail(fmt.Errorf("%w: no consistency proof from %s of %d records to the tree of %d: %w",
			ErrCheckpointMismatch, what, cp.Size, th.Size, err))
	}
	if err != nil {
		return fmt.Errorf("consistency proof from %d to %d records: %w", cp.Size, th.Size, err)
	}
	if err := tlog.CheckTree(proof, int64(th.Size), th.Root, int64(cp.Size), cp.Root); err != nil {
		return c.fail(fmt.Errorf("%w: the log's tree of %d records (root %s) does not extend %s of %d records (root %s): records were changed after it was signed, or the stored tree hashes were",
			ErrCheckpointMismatch, th.Size, th.Root, what, cp.Size, cp.Root))
	}
	return nil
}

// fail halts the log with err, which it returns wrapped in ErrIntegrity.
func (c *checkpointer) fail(err error) error {
	err = fmt.Errorf("%w: %w", ErrIntegrity, err)
	c.log.halt(err)
	return err
}

// cosign gets latest, the store's latest checkpoint, cosigned unless the
// store holds a cosigned checkpoint of its tree (or a larger one) already,
// and keeps the cosigned one. The caller holds mu.
func (c *checkpointer) cosign(ctx context.Context, latest []byte) error {
	cp, err := ParseCheckpoint(latest)
	if err != nil {
		return err
	}
	if msg, err := c.log.store.LoadCosigned(ctx); err == nil {
		if have, err := ParseCheckpoint(msg); err == nil && have.Size >= cp.Size {
			return nil
		}
	} else if !errors.Is(err, ErrNoCheckpoint) {
		return fmt.Errorf("load the cosigned checkpoint: %w", err)
	}
	cosigned, err := c.cosigner.Cosign(ctx, latest)
	var ahead *WitnessAheadError
	switch {
	case errors.As(err, &ahead):
		return err
	case errors.Is(err, ErrIntegrity):
		c.log.halt(err)
		return err
	case err != nil:
		// Witnesses down or the quorum not met: the cosigner reported it,
		// the log goes on, and the next signing asks again.
		return nil
	}
	if err := c.log.store.SaveCosigned(ctx, cp.Size, cosigned); err != nil {
		return fmt.Errorf("save the cosigned checkpoint: %w", err)
	}
	return nil
}
