package segstore_test

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	"github.com/stage4/stage4/audit/storetest"
)

// TestConformance runs the suite every audit store passes, with the
// default segments and with segments so small that its logs span many
// (preallocated or not), so that chains, trees, listings and cursors
// cross segment boundaries. Faults come through the store's file wrapper:
// a disk whose writes and syncs fail.
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
			storetest.Run(t, func(t *testing.T) storetest.Harness {
				dir := t.TempDir()
				var broken atomic.Bool
				opts := append(tc.opts[:len(tc.opts):len(tc.opts)], segstore.WithFileWrapper(func(f segstore.File) segstore.File {
					return &failingFile{File: f, broken: &broken}
				}))
				return storetest.Harness{
					Open: func(t *testing.T) audit.Store {
						s, err := segstore.Open(dir, opts...)
						require.NoError(t, err)
						return s
					},
					Break: func(*testing.T) { broken.Store(true) },
					Heal:  func(*testing.T) { broken.Store(false) },
				}
			})
		})
	}
}

// errDisk is the failing disk's error.
var errDisk = errors.New("injected disk error")

// failingFile fails every write and sync while broken is set.
type failingFile struct {
	segstore.File
	broken *atomic.Bool
}

func (f *failingFile) WriteAt(p []byte, off int64) (int, error) {
	if f.broken.Load() {
		return 0, errDisk
	}
	return f.File.WriteAt(p, off)
}

func (f *failingFile) Sync() error {
	if f.broken.Load() {
		return errDisk
	}
	return f.File.Sync()
}
