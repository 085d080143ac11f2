package segindex

import (
	"crypto/sha256"
	"encoding/binary"
)

// Field is a record field the index covers. Its value is part of every key
// on disk: the constants never change.
type Field uint8

// The indexed fields.
const (
	ExecutionID Field = 1
	PlanID      Field = 2
	UserID      Field = 3
	Type        Field = 4
)

// Key returns the index key of a field value: the first 8 bytes, big endian,
// of SHA-256(byte(f) || value). Keys are on disk, so this never changes. A
// cryptographic hash keeps callers from choosing values whose keys collide
// with another user's; an accidental collision only costs the store a record
// read that it then filters out.
func Key(f Field, value string) uint64 {
	// Hash from a stack buffer: for the IDs and types we index (well under
	// 127 bytes) Key does not allocate.
	var buf [128]byte
	b := append(buf[:0], byte(f))
	b = append(b, value...)
	sum := sha256.Sum256(b)
	return binary.BigEndian.Uint64(sum[:8])
}
