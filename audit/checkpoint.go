package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// A checkpoint is a C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint):
// a signed note (golang.org/x/mod/sumdb/note, https://c2sp.org/signed-note)
// whose text is three lines,
//
//	<origin>
//	<tree size, decimal>
//	<root hash, standard base64>
//
// where the origin is the signing key's name. Whoever keeps one can later
// demand proofs that a record is in the tree it names (tlog.CheckRecord)
// and that a later tree extends it (tlog.CheckTree), and so hold the log
// to what it once was without trusting its storage.

// TreeHead is the Merkle tree over a log's first Size records.
type TreeHead struct {
	// Size is the number of leaves (records).
	Size uint64
	// Root is the tree's root hash (RFC 6962; SHA-256 of the empty string
	// for an empty tree).
	Root tlog.Hash
}

// Checkpoint is a parsed checkpoint.
type Checkpoint struct {
	// Origin names the log: the name of the key that signs it.
	Origin string
	TreeHead
}

// Errors of checkpoints.
var (
	// ErrNoSigningKey: the log has no key to sign checkpoints with
	// (serve without --audit-signing-key).
	ErrNoSigningKey = errors.New("the audit log has no checkpoint signing key")
	// ErrCheckpointMismatch: the log does not hold the tree that its
	// latest checkpoint names (records were changed, removed or replaced
	// since it was signed).
	ErrCheckpointMismatch = errors.New("the audit log does not extend its latest checkpoint")
	// ErrMalformedCheckpoint: not a checkpoint, or not signed by the key.
	ErrMalformedCheckpoint = errors.New("malformed checkpoint")
)

// FormatCheckpoint returns a checkpoint's note text.
func FormatCheckpoint(origin string, th TreeHead) string {
	return fmt.Sprintf("%s\n%d\n%s\n", origin, th.Size, base64.StdEncoding.EncodeToString(th.Root[:]))
}

// SignCheckpoint returns the checkpoint of th signed by signer, whose name
// is the origin.
func SignCheckpoint(signer note.Signer, th TreeHead) ([]byte, error) {
	msg, err := note.Sign(&note.Note{Text: FormatCheckpoint(signer.Name(), th)}, signer)
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	return msg, nil
}

// OpenCheckpoint checks that msg is a checkpoint signed by verifier, for
// the origin that is verifier's name, and parses it.
func OpenCheckpoint(msg []byte, verifier note.Verifier) (Checkpoint, error) {
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrMalformedCheckpoint, err)
	}
	cp, err := parseCheckpointText(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	if cp.Origin != verifier.Name() {
		return Checkpoint{}, fmt.Errorf("%w: origin %q is not the key's name %q", ErrMalformedCheckpoint, cp.Origin, verifier.Name())
	}
	return cp, nil
}

// ParseCheckpoint parses a signed checkpoint without checking its
// signatures: for checkpoints the log itself stored.
func ParseCheckpoint(msg []byte) (Checkpoint, error) {
	text, _, ok := bytes.Cut(msg, []byte("\n\n"))
	if !ok {
		return Checkpoint{}, fmt.Errorf("%w: no signature block", ErrMalformedCheckpoint)
	}
	return parseCheckpointText(string(text) + "\n")
}

// parseCheckpointText parses a checkpoint's note text; extension lines
// after the root hash are allowed and ignored, as C2SP tlog-checkpoint says.
func parseCheckpointText(text string) (Checkpoint, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 || lines[0] == "" {
		return Checkpoint{}, fmt.Errorf("%w: want origin, size and root hash lines", ErrMalformedCheckpoint)
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil || (lines[1] != "0" && lines[1][0] == '0') {
		return Checkpoint{}, fmt.Errorf("%w: tree size %q", ErrMalformedCheckpoint, lines[1])
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return Checkpoint{}, fmt.Errorf("%w: root hash %q", ErrMalformedCheckpoint, lines[2])
	}
	cp := Checkpoint{Origin: lines[0], TreeHead: TreeHead{Size: size}}
	copy(cp.Root[:], root)
	return cp, nil
}

// WithCheckpointSigner lets the log sign checkpoints with signer (see
// SignCheckpoint); without it, Checkpoint fails with ErrNoSigningKey.
func WithCheckpointSigner(signer note.Signer) Option {
	return func(c *logConfig) { c.signer = signer }
}

// Tree returns the tree over the log's durable records: the largest tree
// a checkpoint may be signed for, and for which proofs can be made.
func (l *Log) Tree(ctx context.Context) (TreeHead, error) {
	if l.isClosed() {
		return TreeHead{}, ErrClosed
	}
	head, err := l.store.DurableHead(ctx)
	if err != nil {
		return TreeHead{}, fmt.Errorf("durable audit tree: %w", err)
	}
	root, err := TreeRoot(int64(head.Sequence), head.Tree)
	if err != nil {
		return TreeHead{}, fmt.Errorf("%w: durable audit tree: %w", ErrDataLoss, err)
	}
	return TreeHead{Size: head.Sequence, Root: root}, nil
}

// ReadHashes returns the tree's stored hashes at indexes, of durable
// records only (see Store.ReadHashes).
func (l *Log) ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	if l.isClosed() {
		return nil, ErrClosed
	}
	return l.store.ReadHashes(ctx, indexes)
}

// hashReader is the tlog.HashReader of the log's durable tree; ctx bounds
// its reads.
func (l *Log) hashReader(ctx context.Context) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		return l.ReadHashes(ctx, indexes)
	})
}

// Checkpoint returns the latest signed checkpoint, whichever process of
// the store signed it: ErrNoSigningKey without WithCheckpointSigner,
// ErrNoCheckpoint before the first.
func (l *Log) Checkpoint(ctx context.Context) ([]byte, error) {
	if l.cfg.signer == nil {
		return nil, ErrNoSigningKey
	}
	if l.isClosed() {
		return nil, ErrClosed
	}
	return l.store.LoadCheckpoint(ctx)
}

// checkpointer is the log's record of what it signed.
type checkpointer struct {
	mu      sync.Mutex
	checked bool   // the stored checkpoint was checked against the tree
	signed  uint64 // the size of the latest checkpoint stored
	any     bool   // a checkpoint is stored
}

// SignCheckpoint signs and stores a checkpoint of the durable tree when it
// grew since the latest stored checkpoint (or none is stored yet), and
// returns the tree and whether it signed. The first call checks that the
// durable tree extends the latest stored checkpoint (root and size) and
// fails with ErrCheckpointMismatch when it does not: signing on would
// sign a fork of what auditors hold. The gateway calls it periodically
// and once more at shutdown.
func (l *Log) SignCheckpoint(ctx context.Context) (TreeHead, bool, error) {
	if l.cfg.signer == nil {
		return TreeHead{}, false, ErrNoSigningKey
	}
	c := &l.checkpoints
	c.mu.Lock()
	defer c.mu.Unlock()
	th, err := l.Tree(ctx)
	if err != nil {
		return TreeHead{}, false, err
	}
	if !c.checked {
		if err := l.checkStoredCheckpoint(ctx, th); err != nil {
			return th, false, err
		}
		c.checked = true
	}
	if c.any && th.Size <= c.signed {
		return th, false, nil
	}
	msg, err := SignCheckpoint(l.cfg.signer, th)
	if err != nil {
		return th, false, err
	}
	if err := l.store.SaveCheckpoint(ctx, th.Size, msg); err != nil {
		return th, false, fmt.Errorf("save checkpoint: %w", err)
	}
	c.signed, c.any = th.Size, true
	return th, true, nil
}

// checkStoredCheckpoint compares the latest stored checkpoint with the
// durable tree th and notes its size. The caller holds checkpoints.mu.
func (l *Log) checkStoredCheckpoint(ctx context.Context, th TreeHead) error {
	msg, err := l.store.LoadCheckpoint(ctx)
	if errors.Is(err, ErrNoCheckpoint) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load checkpoint: %w", err)
	}
	cp, err := ParseCheckpoint(msg)
	if err != nil {
		return fmt.Errorf("%w: the stored checkpoint: %w", ErrCheckpointMismatch, err)
	}
	if cp.Size > th.Size {
		return fmt.Errorf("%w: it names %d records, the log holds %d", ErrCheckpointMismatch, cp.Size, th.Size)
	}
	root, err := tlog.TreeHash(int64(cp.Size), l.hashReader(ctx))
	if err != nil {
		return fmt.Errorf("tree hash at the latest checkpoint's size %d: %w", cp.Size, err)
	}
	if root != cp.Root {
		return fmt.Errorf("%w: the tree of its %d records has root %s, the checkpoint %s", ErrCheckpointMismatch, cp.Size, root, cp.Root)
	}
	l.checkpoints.signed, l.checkpoints.any = cp.Size, true
	return nil
}

// isClosed reports whether Close has begun.
func (l *Log) isClosed() bool {
	select {
	case <-l.closing:
		return true
	default:
		return false
	}
}
