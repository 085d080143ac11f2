package faultfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// FS is a mounted fault-injecting file system. Its methods are safe for
// concurrent use.
type FS struct {
	t       testing.TB
	mnt     string // the mount point
	backing string // the directory everything is passed through to

	mountMu sync.Mutex // serialises Crash and the final unmount
	server  *fuse.Server

	mu    sync.Mutex // guards files and each overlay
	files map[uint64]*overlay

	faultMu   sync.Mutex
	hang      chan struct{}          // non-nil: syncs wait until it is closed
	hangOnly  func(name string) bool // nil: every sync hangs; else those of the names it accepts
	hung      int                    // syncs waiting now
	hungMoved chan struct{}          // closed and replaced whenever hung changes
	syncErr   syscall.Errno
	writeErr  syscall.Errno
	crashing  bool // syncs fail without applying anything
	gen       int  // crashes so far: a sync begun before one fails
	syncs     int  // successful syncs of files and directories
}

// Mount mounts a new, empty file system at a new temporary directory,
// unmounted when the test ends, failed or not. It skips the test where
// FUSE cannot be mounted (no root, no /dev/fuse), or fails it under
// CI=true, where the machine is known to allow it.
func Mount(t testing.TB) *FS {
	t.Helper()
	if err := usable(); err != nil {
		unavailable(t, err)
	}
	f := &FS{
		t:         t,
		mnt:       filepath.Join(t.TempDir(), "mnt"),
		backing:   filepath.Join(t.TempDir(), "backing"),
		files:     map[uint64]*overlay{},
		hungMoved: make(chan struct{}),
	}
	for _, dir := range []string{f.mnt, f.backing} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatalf("faultfs: %v", err)
		}
	}
	if err := f.mount(); err != nil {
		unavailable(t, err)
	}
	// Registered after t.TempDir's own cleanup, so it runs before it.
	t.Cleanup(f.unmount)
	return f
}

// usable says why FUSE cannot be mounted here, or nil.
func usable() error {
	if os.Geteuid() != 0 {
		return errors.New("mounting FUSE without fusermount needs root")
	}
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return dev.Close()
}

func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("faultfs: cannot mount FUSE: %v (CI=true: the fault tests must run in CI)", err)
	}
	t.Skipf("faultfs: cannot mount FUSE (%v); run the test as root on a machine with /dev/fuse", err)
}

func (f *FS) mount() error {
	lb, err := fs.NewLoopbackRoot(f.backing)
	if err != nil {
		return err
	}
	loop := lb.(*fs.LoopbackNode)
	root := &node{LoopbackNode: loop, fs: f}
	loop.RootData.RootNode = root
	server, err := fs.Mount(f.mnt, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			DirectMountStrict: true,
			FsName:            "faultfs",
			Name:              "faultfs",
		},
	})
	if err != nil {
		return fmt.Errorf("mount %s: %w", f.mnt, err)
	}
	f.server = server
	return nil
}

// unmount is the test's cleanup: it releases hung syncs and unmounts,
// lazily (detached, the connection aborted) if a process still uses the
// file system, so that a failed test does not leave a mount behind.
func (f *FS) unmount() {
	f.Heal()
	f.mountMu.Lock()
	defer f.mountMu.Unlock()
	if f.server == nil {
		return
	}
	if err := f.server.Unmount(); err != nil {
		f.t.Logf("faultfs: unmount %s: %v; detaching it", f.mnt, err)
		abort(f.mnt)
		if err := syscall.Unmount(f.mnt, syscall.MNT_DETACH); err != nil {
			f.t.Errorf("faultfs: detach %s: %v", f.mnt, err)
		}
	}
	f.server = nil
}

// abort aborts the FUSE connection of the mount at mnt (fusectl), so that
// every process still waiting on it gets ENOTCONN.
func abort(mnt string) {
	var st syscall.Stat_t
	if syscall.Stat(mnt, &st) != nil {
		return
	}
	_ = os.WriteFile(fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", st.Dev), []byte("1"), 0)
}

// Dir is the mount point: the directory to give the program under test.
func (f *FS) Dir() string { return f.mnt }

// HangSyncs makes every fsync and fdatasync, of files and of directories,
// wait until ReleaseSyncs, Heal or Crash (or until the caller is
// interrupted, when it fails with EINTR, which Go retries).
func (f *FS) HangSyncs() { f.HangSyncsOf(nil) }

// HangSyncsOf is HangSyncs for the files and directories whose base name
// match accepts (nil: all); the others' syncs go on. A test that must
// catch a process between its write of a file and that file's sync hangs
// that file's syncs only, so that no other sync the process makes first
// (a small file it rewrites, say) holds it up before it writes.
func (f *FS) HangSyncsOf(match func(name string) bool) {
	f.faultMu.Lock()
	defer f.faultMu.Unlock()
	if f.hang == nil {
		f.hang = make(chan struct{})
	}
	f.hangOnly = match
}

// ReleaseSyncs lets the hung syncs go on, and the ones after them.
func (f *FS) ReleaseSyncs() {
	f.faultMu.Lock()
	defer f.faultMu.Unlock()
	f.releaseLocked()
}

func (f *FS) releaseLocked() {
	if f.hang != nil {
		close(f.hang)
		f.hang = nil
	}
	f.hangOnly = nil
}

// WaitHungSyncs waits until at least n syncs are hung, or ctx ends.
func (f *FS) WaitHungSyncs(ctx context.Context, n int) error {
	for {
		f.faultMu.Lock()
		hung, moved := f.hung, f.hungMoved
		f.faultMu.Unlock()
		if hung >= n {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return fmt.Errorf("faultfs: %d syncs hung, waiting for %d: %w", hung, n, ctx.Err())
		}
	}
}

// FailSyncs makes every sync fail with errno (EIO, say) until Heal; a
// failed sync makes nothing durable.
func (f *FS) FailSyncs(errno syscall.Errno) {
	f.faultMu.Lock()
	defer f.faultMu.Unlock()
	f.syncErr = errno
}

// FailWrites makes every write, and every fallocate that would grow a
// file, fail with errno (ENOSPC or EIO) until Heal.
func (f *FS) FailWrites(errno syscall.Errno) {
	f.faultMu.Lock()
	defer f.faultMu.Unlock()
	f.writeErr = errno
}

// Heal ends every fault: hung syncs go on, nothing fails.
func (f *FS) Heal() {
	f.faultMu.Lock()
	defer f.faultMu.Unlock()
	f.releaseLocked()
	f.syncErr, f.writeErr = 0, 0
}

// Syncs is the number of syncs (of files and of directories) that have
// succeeded since the mount.
func (f *FS) Syncs() int {
	f.faultMu.Lock()
	defer f.faultMu.Unlock()
	return f.syncs
}

// Crash simulates a crash and a restart of the machine: every write that
// no successful sync of its file covered is lost, hung syncs fail, the
// faults end, and the file system is mounted again at the same Dir. The
// processes that used it must have exited; a busy mount fails the test.
func (f *FS) Crash() {
	f.t.Helper()
	f.faultMu.Lock()
	f.crashing = true
	f.releaseLocked()
	f.faultMu.Unlock()

	f.mountMu.Lock()
	defer f.mountMu.Unlock()
	if err := f.server.Unmount(); err != nil {
		f.t.Fatalf("faultfs: crash: unmount %s: %v (stop every process using it first)", f.mnt, err)
	}
	f.server = nil
	f.mu.Lock()
	clear(f.files)
	f.mu.Unlock()
	f.faultMu.Lock()
	f.crashing = false
	f.gen++
	f.syncErr, f.writeErr = 0, 0
	f.faultMu.Unlock()
	if err := f.mount(); err != nil {
		f.t.Fatalf("faultfs: crash: mount again: %v", err)
	}
}

// syncFault waits while syncs of name (a base name) hang and returns the
// errno a sync must fail with, or 0.
func (f *FS) syncFault(ctx context.Context, name string) syscall.Errno {
	f.faultMu.Lock()
	gen := f.gen
	for f.hang != nil && (f.hangOnly == nil || f.hangOnly(name)) {
		hang := f.hang
		f.setHungLocked(f.hung + 1)
		f.faultMu.Unlock()
		var interrupted bool
		select {
		case <-hang:
		case <-ctx.Done():
			interrupted = true
		}
		f.faultMu.Lock()
		f.setHungLocked(f.hung - 1)
		if interrupted {
			f.faultMu.Unlock()
			return syscall.EINTR
		}
	}
	defer f.faultMu.Unlock()
	switch {
	case f.crashing || f.gen != gen:
		return syscall.EIO
	case f.syncErr != 0:
		return f.syncErr
	}
	return 0
}

func (f *FS) setHungLocked(n int) {
	f.hung = n
	close(f.hungMoved)
	f.hungMoved = make(chan struct{})
}

// synced counts a successful sync.
func (f *FS) synced() {
	f.faultMu.Lock()
	defer f.faultMu.Unlock()
	f.syncs++
}

// writeFault returns the errno writes must fail with, or 0.
func (f *FS) writeFault() syscall.Errno {
	f.faultMu.Lock()
	defer f.faultMu.Unlock()
	return f.writeErr
}

// overlay returns the overlay of inode ino, whose backing file fd is
// open, making one if it has none. f.mu must be held.
func (f *FS) overlay(ino uint64, fd int) (*overlay, syscall.Errno) {
	if o := f.files[ino]; o != nil {
		return o, 0
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, fs.ToErrno(err)
	}
	o := newOverlay(st.Size)
	f.files[ino] = o
	return o, 0
}

// forget drops the overlay of inode ino, a new file's.
func (f *FS) forget(ino uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.files, ino)
}

// fixSize puts the size of a regular file's overlay into attr.
func (f *FS) fixSize(ino uint64, attr *fuse.Attr) {
	if attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if o := f.files[ino]; o != nil {
		attr.Size = uint64(o.size)
		attr.Blocks = (attr.Size + 511) / 512
	}
}
