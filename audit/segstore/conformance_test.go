package segstore_test

import (
	"errors"
	"sync"
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
				d := &disk{release: make(chan struct{})}
				opts := append(tc.opts[:len(tc.opts):len(tc.opts)], segstore.WithFileWrapper(func(f segstore.File) segstore.File {
					return &failingFile{File: f, disk: d}
				}))
				return storetest.Harness{
					Open: func(t *testing.T) audit.Store {
						s, err := segstore.Open(dir, opts...)
						require.NoError(t, err)
						return s
					},
					Break:      func(*testing.T) { d.broken.Store(true) },
					Hang:       func(*testing.T) { d.hang() },
					Heal:       func(*testing.T) { d.heal() },
					LoseAnswer: func(*testing.T) { d.failNextSync.Store(true) },
				}
			})
		})
	}
}

// errDisk is the failing disk's error.
var errDisk = errors.New("injected disk error")

// disk is the faults of a log directory's segment files: writes and syncs
// that fail, syncs that hang until healed, or the next sync failing (its
// records' fate unknown).
type disk struct {
	broken, failNextSync atomic.Bool
	mu                   sync.Mutex
	hung                 bool
	release              chan struct{}
}

func (d *disk) hang() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hung = true
}

func (d *disk) heal() {
	d.broken.Store(false)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hung {
		d.hung = false
		close(d.release)
		d.release = make(chan struct{})
	}
}

// waitIfHung blocks while the disk hangs.
func (d *disk) waitIfHung() {
	d.mu.Lock()
	hung, release := d.hung, d.release
	d.mu.Unlock()
	if hung {
		<-release
	}
}

// failingFile is a segment file on d.
type failingFile struct {
	segstore.File
	disk *disk
}

func (f *failingFile) WriteAt(p []byte, off int64) (int, error) {
	if f.disk.broken.Load() {
		return 0, errDisk
	}
	return f.File.WriteAt(p, off)
}

func (f *failingFile) Sync() error {
	f.disk.waitIfHung()
	if f.disk.broken.Load() || f.disk.failNextSync.CompareAndSwap(true, false) {
		return errDisk
	}
	return f.File.Sync()
}
