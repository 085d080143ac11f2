package memstore_test

import (
	"testing"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
	"github.com/stage4/stage4/audit/storetest"
)

// TestConformance runs the suite every audit store passes: the memory
// store is a store like the others, with every fault the suite knows.
func TestConformance(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		recovers bool
	}{
		{"database-like", true},
		{"disk-like", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			storetest.Run(t, func(t *testing.T) storetest.Harness {
				st := memstore.NewStorage()
				return storetest.Harness{
					Open:         func(*testing.T) audit.Store { return memstore.Open(st, "conformance") },
					OpenReplica:  func(_ *testing.T, name string) audit.Store { return memstore.Open(st, name) },
					Break:        func(*testing.T) { st.Break(memstore.ErrBroken, !tc.recovers) },
					Hang:         func(*testing.T) { st.Hang() },
					Heal:         func(*testing.T) { st.Heal() },
					Recovers:     tc.recovers,
					LoseAnswer:   func(*testing.T) { st.LoseAnswer() },
					RollBack:     func(_ *testing.T, to audit.Head) { st.RollBack(to) },
					BreakHead:    func(*testing.T) { st.BreakHead() },
					DeleteRecord: func(_ *testing.T, seq uint64) { st.DeleteRecord(seq) },
				}
			})
		})
	}
}
