package segstore_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
					// An operator's edits of the active segment while the
					// store runs: records cut off its end, or one taken
					// out of its middle in place (the file keeps its
					// length). A changed head lives in the store's memory
					// only; the head file's changes are tested apart.
					RollBack: func(t *testing.T, to audit.Head) {
						path, data, i := segmentWith(t, dir, to.Sequence)
						cut := 0
						if i >= 0 {
							cut = i + bytes.IndexByte(data[i:], '\n') + 1
						}
						require.NoError(t, os.Truncate(path, int64(cut)))
					},
					DeleteRecord: func(t *testing.T, seq uint64) {
						path, data, i := segmentWith(t, dir, seq)
						require.GreaterOrEqual(t, i, 0, "no record %d", seq)
						end := i + bytes.IndexByte(data[i:], '\n') + 1
						edited := append(append(append([]byte(nil), data[:i]...), data[end:]...), make([]byte, end-i)...)
						f, err := os.OpenFile(path, os.O_WRONLY, 0)
						require.NoError(t, err)
						defer f.Close()
						_, err = f.WriteAt(edited, 0)
						require.NoError(t, err)
					},
				}
			})
		})
	}
}

// segmentWith returns the path and the content of the segment of the log
// in dir that holds the record of sequence seq, and the record's offset
// in it; the last segment and -1 when none does.
func segmentWith(t *testing.T, dir string, seq uint64) (string, []byte, int) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var path string
	var data []byte
	for _, e := range entries { // by name: by first sequence
		if _, ok := segstore.ParseSegmentName(e.Name()); !ok {
			continue
		}
		path = filepath.Join(dir, e.Name())
		data, err = os.ReadFile(path)
		require.NoError(t, err)
		if i := recordAt(data, seq); i >= 0 {
			return path, data, i
		}
	}
	require.NotEmpty(t, path, "no segment in %s", dir)
	return path, data, -1
}

// recordAt returns the offset of the record of sequence seq in a
// segment's content, or -1.
func recordAt(data []byte, seq uint64) int {
	prefix := []byte(fmt.Sprintf(`{"sequence":%d,`, seq))
	for off := 0; off < len(data); {
		if bytes.HasPrefix(data[off:], prefix) {
			return off
		}
		nl := bytes.IndexByte(data[off:], '\n')
		if nl < 0 {
			break
		}
		off += nl + 1
	}
	return -1
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
