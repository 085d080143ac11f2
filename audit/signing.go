package audit

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// SigningKey is a key that signs a log's checkpoints: a note signer and
// its verifier key, which the store pins (see Store, rule 12).
type SigningKey struct {
	note.Signer
	// VerifierKey is the signer's note verifier key,
	// <name>+<hash>+<base64 key>, as stage4 audit keygen prints it. When
	// empty (a Signer given without it), the store pins <name>+<hash>
	// only.
	VerifierKey string
}

// ParseSigningKey parses a note private key, PRIVATE+KEY+<name>+<hash>+<key>
// (Ed25519, as stage4 audit keygen and note.GenerateKey make it), and
// derives its verifier key.
func ParseSigningKey(skey string) (SigningKey, error) {
	skey = strings.TrimSpace(skey)
	signer, err := note.NewSigner(skey)
	if err != nil {
		return SigningKey{}, err
	}
	// note.NewSigner has checked the form, PRIVATE+KEY+<name>+<hash>+<key>
	// (a name has no '+', base64 may), and the key is base64 of the
	// algorithm byte and the Ed25519 seed.
	b64 := strings.SplitN(skey, "+", 5)[4]
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return SigningKey{}, errors.New("not an Ed25519 note key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(signer.Name(), pub)
	if err != nil {
		return SigningKey{}, err
	}
	return SigningKey{Signer: signer, VerifierKey: vkey}, nil
}

// pin is what the store pins for k: its verifier key, or <name>+<hash>.
func (k SigningKey) pin() string {
	if k.VerifierKey != "" {
		return k.VerifierKey
	}
	return keyID(k.Name(), k.KeyHash())
}

// keyID names a key in messages: <name>+<hash>, the start of its verifier
// key.
func keyID(name string, hash uint32) string { return fmt.Sprintf("%s+%08x", name, hash) }

// pinID names a pinned key in messages: its verifier key up to the hash.
func pinID(pin string) string {
	if i := strings.LastIndexByte(pin, '+'); i > 0 && strings.Count(pin, "+") == 2 {
		return pin[:i]
	}
	return pin
}

// checkSigningKeys refuses keys that cannot sign one log together: none,
// different names (a checkpoint's origin is its signers' name), or one
// key twice.
func checkSigningKeys(keys []SigningKey) error {
	seen := map[uint32]bool{}
	for _, k := range keys {
		if k.Name() != keys[0].Name() {
			return fmt.Errorf("checkpoint signing keys %s and %s have different names: every key of a log is named after its origin",
				keyID(keys[0].Name(), keys[0].KeyHash()), keyID(k.Name(), k.KeyHash()))
		}
		if seen[k.KeyHash()] {
			return fmt.Errorf("checkpoint signing key %s is given twice", keyID(k.Name(), k.KeyHash()))
		}
		seen[k.KeyHash()] = true
	}
	return nil
}

// pinsOf are the pins of keys, sorted: the set a store keeps.
func pinsOf(keys []SigningKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.pin()
	}
	slices.Sort(out)
	return out
}

// sameSet reports whether two sorted lists of pins are the same set.
func sameSet(a, b []string) bool { return slices.Equal(a, b) }

// shareAny reports whether two lists of pins have a pin in common.
func shareAny(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

// describePins lists pins by name and hash, for messages.
func describePins(pins []string) string {
	ids := make([]string, len(pins))
	for i, p := range pins {
		ids[i] = pinID(p)
	}
	return strings.Join(ids, ", ")
}

// ErrSigningKeyMismatch: the store's checkpoints are signed by other keys
// than this process's (Store rule 12): another log's key, or a key
// rotated without an overlap. Serve refuses to start on it.
var ErrSigningKeyMismatch = errors.New("the audit store is signed by other checkpoint keys")

// Cosigner gets a log's checkpoints cosigned by witnesses (package
// internal/witness in this module).
type Cosigner interface {
	// Cosign asks the witnesses to cosign checkpoint, a checkpoint the
	// log just signed, and returns it with their cosignature lines
	// appended when they meet the policy's quorum. An error wrapping
	// ErrIntegrity says that a witness holds a tree this checkpoint does
	// not extend (a fork or a rollback of the log): the log halts. Any
	// other error (witnesses down, the quorum not met) leaves the log as
	// it is, serving its latest cosigned checkpoint; the cosigner reports
	// it itself, and the next signing asks again.
	Cosign(ctx context.Context, checkpoint []byte) ([]byte, error)
}
