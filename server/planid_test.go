package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// TestFingerprintsAreHMACSHA256 checks the reused keyed states and buffers
// against HMAC-SHA256 computed afresh, from many goroutines at once (the
// race detector watches the pools), with plans large enough to leave a
// buffer out of the pool.
func TestFingerprintsAreHMACSHA256(t *testing.T) {
	t.Parallel()
	key := []byte("key of one store")
	fp := NewFingerprinter(key)
	reference := func(b []byte) string {
		m := hmac.New(sha256.New, key)
		m.Write(b)
		return hex.EncodeToString(m.Sum(nil))
	}
	plans := []*stage4v1.Plan{validPlan(1), validPlan(8)}
	big := validPlan(2)
	big.Steps[0].Parameters.Fields["text"] = structpb.NewStringValue(string(make([]byte, 2*maxPooledPlanBytes)))
	plans = append(plans, big)

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				p := plans[(g+i)%len(plans)]
				b, err := proto.MarshalOptions{Deterministic: true}.Marshal(p)
				if !assertNoError(t, err) {
					return
				}
				if got, want := fp.PlanID(p), planIDPrefix+reference(b); got != want {
					t.Errorf("PlanID = %s, want %s", got, want)
					return
				}
				s := fmt.Sprint("token-", g, "-", i)
				if got, want := fp.Short(s), planIDPrefix+reference([]byte(s))[:16]; got != want {
					t.Errorf("Short(%q) = %s, want %s", s, got, want)
					return
				}
			}
		})
	}
	wg.Wait()
	require.Regexp(t, `^hmac-sha256:[0-9a-f]{16}$`, fp.Short(""))
}

func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}
