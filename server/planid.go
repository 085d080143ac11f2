package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"sync"

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
	// Every ExecutePlan computes two fingerprints. Keyed states are
	// reused (crypto/hmac's Reset restores the keyed state instead of
	// hashing the key again) and so are encoding buffers: a new HMAC and
	// buffer per call were about a third of plan_id's cost under load.
	macs sync.Pool // hash.Hash: HMAC-SHA256 under key
	bufs sync.Pool // *[]byte: a plan's encoding
}

// NewFingerprinter returns a Fingerprinter keyed with key, which must stay
// secret and be the same for every replica of one audit store.
func NewFingerprinter(key []byte) *Fingerprinter {
	f := &Fingerprinter{key: append([]byte(nil), key...)}
	f.macs.New = func() any { return hmac.New(sha256.New, f.key) }
	f.bufs.New = func() any { return new([]byte) }
	return f
}

// maxPooledPlanBytes bounds the encoding buffers kept for reuse, so that
// one large plan does not pin its buffer.
const maxPooledPlanBytes = 64 << 10

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
	buf := f.bufs.Get().(*[]byte)
	defer func() {
		if cap(*buf) <= maxPooledPlanBytes {
			f.bufs.Put(buf)
		}
	}()
	b, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend((*buf)[:0], plan)
	*buf = b
	if err != nil {
		return ""
	}
	var sum [sha256.Size]byte
	f.sum(b, &sum)
	return planIDPrefix + hex.EncodeToString(sum[:])
}

// PlanIDEncoded returns PlanID(plan) and the encoding it digests, which the
// caller keeps: the deterministic binary encoding of plan, which is also
// the encoding of the Stage-3 request ToStage3 makes of it, so that the
// audit interceptor can hand Stage-3 the very bytes plan_id names instead
// of encoding the plan a second time. Both are empty when PlanID's are.
func (f *Fingerprinter) PlanIDEncoded(plan *stage4v1.Plan) (string, []byte) {
	if plan == nil {
		return "", nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(plan)
	if err != nil {
		return "", nil
	}
	var sum [sha256.Size]byte
	f.sum(b, &sum)
	return planIDPrefix + hex.EncodeToString(sum[:]), b
}

// Short returns a short keyed fingerprint of s ("hmac-sha256:" and 16 hex
// digits): enough to match a value an investigator already holds, too
// short and too keyed to search for one.
func (f *Fingerprinter) Short(s string) string {
	var sum [sha256.Size]byte
	f.sum([]byte(s), &sum)
	return planIDPrefix + hex.EncodeToString(sum[:8])
}

// sum writes the HMAC-SHA256 of b into out.
func (f *Fingerprinter) sum(b []byte, out *[sha256.Size]byte) {
	m := f.macs.Get().(hash.Hash)
	m.Write(b)
	m.Sum(out[:0])
	m.Reset()
	f.macs.Put(m)
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
