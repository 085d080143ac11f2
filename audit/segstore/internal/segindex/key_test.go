package segindex

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKeyIsStable pins Key to values computed independently (Python's
// hashlib): keys are on disk, so a change here orphans every run.
func TestKeyIsStable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		field Field
		value string
		want  uint64
	}{
		{"execution", ExecutionID, "exec-1", 0xb7ed6ed5523eec29},
		{"plan", PlanID, "plan-1", 0x57e27e63f698a17c},
		{"user", UserID, "alice", 0x4bbd54a90a6dae22},
		{"type", Type, "EXECUTION_STARTED", 0xba43068471aa7cce},
		{"empty value", ExecutionID, "", 0x4bf5122f344554c5},
		{"value longer than the stack buffer", Type, strings.Repeat("x", 200), 0x091f37404971fc1b},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, Key(tt.field, tt.value))
		})
	}
}

func TestKeyDependsOnField(t *testing.T) {
	t.Parallel()
	seen := map[uint64]Field{}
	for _, f := range []Field{ExecutionID, PlanID, UserID, Type} {
		k := Key(f, "same-value")
		require.NotContains(t, seen, k, "field %d", f)
		seen[k] = f
	}
}
