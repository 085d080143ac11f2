package witness

import (
	"errors"
	"fmt"
	"time"

	"filippo.io/torchwood"
	"golang.org/x/mod/sumdb/note"

	"github.com/stage4/stage4/audit"
)

// Verified is a checkpoint whose log signature verifies, with the
// cosignatures on it that verify by the policy's witnesses.
type Verified struct {
	// Checkpoint is the parsed checkpoint.
	Checkpoint audit.Checkpoint
	// Cosignatures are the verified cosignatures, in the policy's order
	// of the witnesses.
	Cosignatures []Cosignature
}

// Cosigners returns the names of the witnesses whose cosignatures verify.
func (v *Verified) Cosigners() []string {
	var names []string
	for _, c := range v.Cosignatures {
		names = append(names, c.Witness)
	}
	return names
}

// VerifyCheckpoint checks a cosigned checkpoint, as a monitor does: that
// msg is a checkpoint signed by the log's key (whose name is the origin)
// and that the cosignatures on it by p's witnesses meet p's quorum.
// Signatures by keys that are neither are ignored; one by a known key that
// does not verify is an error (audit.ErrMalformedCheckpoint), as is a
// checkpoint without the log's signature. When the quorum is not met, the
// error is ErrQuorumNotMet and the Verified is returned too, to say who did
// cosign. The cosignatures' times are returned, not judged: how old a
// checkpoint may be is the caller's policy.
func VerifyCheckpoint(msg []byte, log note.Verifier, p *Policy) (*Verified, error) {
	cp, err := audit.OpenCheckpoint(msg, log)
	if err != nil {
		return nil, err
	}
	n, err := note.Open(msg, note.VerifierList(append([]note.Verifier{log}, p.Verifiers()...)...))
	if err != nil {
		var invalid *note.InvalidSignatureError
		if errors.As(err, &invalid) {
			return nil, fmt.Errorf("%w: the signature by %s+%08x does not verify", audit.ErrMalformedCheckpoint, invalid.Name, invalid.Hash)
		}
		return nil, fmt.Errorf("%w: %w", audit.ErrMalformedCheckpoint, err)
	}
	type key struct {
		name string
		hash uint32
	}
	by := make(map[key]note.Signature, len(n.Sigs))
	for _, s := range n.Sigs {
		by[key{s.Name, s.Hash}] = s
	}
	v := &Verified{Checkpoint: cp}
	for _, w := range p.witnesses {
		s, ok := by[key{w.Name, w.verifier.KeyHash()}]
		if !ok {
			continue
		}
		ts, err := torchwood.CosignatureTimestamp(s)
		if err != nil {
			return nil, fmt.Errorf("%w: cosignature by %s: %w", audit.ErrMalformedCheckpoint, w.Name, err)
		}
		v.Cosignatures = append(v.Cosignatures, Cosignature{
			Witness: w.Name,
			Time:    time.Unix(ts, 0),
			Line:    fmt.Sprintf("— %s %s\n", s.Name, s.Base64),
		})
	}
	if !p.QuorumMet(v.Cosigners()) {
		return v, fmt.Errorf("%w: %s is not met by the cosignatures of %v", ErrQuorumNotMet, p.quorumOf, v.Cosigners())
	}
	return v, nil
}
