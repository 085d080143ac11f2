package server

import (
	"crypto/sha256"
	"encoding/hex"

	"google.golang.org/protobuf/proto"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// PlanID returns the plan's content digest: "sha256:" and the hex SHA-256 of
// its deterministic binary encoding, so equal plans get equal ids whatever
// the order their parameter maps were built in. It returns "" for a nil plan
// and for a plan that has no binary encoding (invalid UTF-8 or nil list
// entries, which only Go callers can build); callers must treat "" as no id.
//
// Deterministic marshalling is stable within one build of the protobuf
// runtime, which is all the audit log needs: ids are recorded, never
// recomputed from old plans.
func PlanID(plan *stage4v1.Plan) string {
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
