package gateway

import (
	"context"
	"crypto/rand"

	"github.com/stage4/stage4/audit"
)

// FingerprintKey is a stand-in until the stores keep their key.
func FingerprintKey(context.Context, audit.Store, Config) ([]byte, error) {
	key := make([]byte, 32)
	rand.Read(key)
	return key, nil
}
