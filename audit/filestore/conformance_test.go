package filestore_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	"github.com/stage4/stage4/audit/storetest"
)

// TestConformance runs the suite every audit store passes.
func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) storetest.Opener {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		return func(t *testing.T) audit.Store {
			s, err := filestore.Open(path)
			require.NoError(t, err)
			return s
		}
	})
}
