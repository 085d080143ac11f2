package segstore_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	"github.com/stage4/stage4/audit/storetest"
)

// TestConformance runs the suite every audit store passes, with the
// default segments and with segments so small that its logs span many
// (preallocated or not), so that chains, trees, listings and page tokens
// cross segment boundaries.
func TestConformance(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts []segstore.Option
	}{
		{"default", nil},
		{"small-segments", []segstore.Option{segstore.WithSegmentBytes(segstore.MinSegmentBytes)}},
		{"small-segments-not-preallocated", []segstore.Option{segstore.WithSegmentBytes(segstore.MinSegmentBytes), segstore.WithPreallocate(false)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			storetest.Run(t, func(t *testing.T) storetest.Opener {
				dir := t.TempDir()
				return func(t *testing.T) audit.Store {
					s, err := segstore.Open(dir, tc.opts...)
					require.NoError(t, err)
					return s
				}
			})
		})
	}
}
