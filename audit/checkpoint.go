package audit

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

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
