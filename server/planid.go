package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"

	"google.golang.org/protobuf/proto"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// Fingerprinter computes the keyed digests that the audit log holds in
// place of secrets and whole plans: plan_id, token and message
// fingerprints. They are HMAC-SHA256 under a deployment secret (the audit
// store's key, or --fingerprint-key-file), so that a reader of the log
// cannot confirm a guessed token or parameter value offline, while equal
// inputs still get equal digests within one store.
type Fingerprinter struct {
	key []byte
}

// NewFingerprinter returns a Fingerprinter keyed with key, which must stay
// secret and be the same for every replica of one audit store.
func NewFingerprinter(key []byte) *Fingerprinter {
	return &Fingerprinter{key: append([]byte(nil), key...)}
}

// planIDPrefix starts every plan_id.
const planIDPrefix = "hmac-sha256:"

// PlanID returns the plan's keyed content digest: "hmac-sha256:" and the
// hex HMAC-SHA256 of its deterministic binary encoding, so equal plans get
// equal ids whatever the order their parameter maps were built in. It
// returns "" for a nil plan and for a plan that has no binary encoding
// (invalid UTF-8 or nil list entries, which only Go callers can build);
// callers must treat "" as no id.
//
// Deterministic marshalling is stable within one build of the protobuf
// runtime, which is all the audit log needs: ids are recorded, never
// recomputed from old plans.
func (f *Fingerprinter) PlanID(plan *stage4v1.Plan) string {
	if plan == nil {
		return ""
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(plan)
	if err != nil {
		return ""
	}
	return planIDPrefix + hex.EncodeToString(f.sum(b))
}

// Short returns a short keyed fingerprint of s ("hmac-sha256:" and 16 hex
// digits): enough to match a value an investigator already holds, too
// short and too keyed to search for one.
func (f *Fingerprinter) Short(s string) string {
	return planIDPrefix + hex.EncodeToString(f.sum([]byte(s))[:8])
}

func (f *Fingerprinter) sum(b []byte) []byte {
	m := hmac.New(sha256.New, f.key)
	m.Write(b)
	return m.Sum(nil)
}

// ContentDigest returns the plan's unkeyed content digest, "sha256:" and
// 64 hex digits, for offline tools that hold no key (stage4 validate). It
// is not the plan_id a server records.
func ContentDigest(plan *stage4v1.Plan) string {
	if plan == nil {
		return ""
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(plan)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
