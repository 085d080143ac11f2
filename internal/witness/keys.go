package witness

import (
	"crypto"
	"crypto/ed25519"
	"errors"
	"io"

	"filippo.io/torchwood"
	"golang.org/x/mod/sumdb/note"
)

// newCosignatureVerifier returns torchwood's verifier of the
// c2sp.org/tlog-cosignature (cosignature/v1) signatures of the key named
// name.
//
// torchwood v0.6.1 has no constructor for a verifier from a public key
// (NewCosignatureVerifierFromKey came in v0.10.0, which needs Go 1.27), but
// a CosignatureSigner carries its verifier, and building a signer calls
// nothing but its key's Public. So the verifier comes from a signer over a
// key that can only say what it is: the cosignature format, key hash and
// checks are torchwood's own, not a copy. When torchwood moves on, this
// becomes torchwood.NewCosignatureVerifierFromKey(name, key).
func newCosignatureVerifier(name string, key ed25519.PublicKey) (note.Verifier, error) {
	s, err := torchwood.NewCosignatureSigner(name, publicKeyOnly{key})
	if err != nil {
		// Only a name that cannot name a note key gets here (empty, a
		// space or a '+'): the key is Ed25519.
		return nil, errors.New("the name cannot name a note key (UTF-8, no '+' or spaces)")
	}
	return s.Verifier(), nil
}

// publicKeyOnly is a crypto.Signer that cannot sign: see
// newCosignatureVerifier.
type publicKeyOnly struct{ key ed25519.PublicKey }

func (k publicKeyOnly) Public() crypto.PublicKey { return k.key }

func (publicKeyOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("a witness verifier cannot sign")
}
