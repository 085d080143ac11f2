package faultfs_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/stage4/stage4/internal/faultfs"
)

func fdatasync(t *testing.T, f *os.File) {
	t.Helper()
	require.NoError(t, unix.Fdatasync(int(f.Fd())))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func open(t *testing.T, path string, flag int) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0o600)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// TestCrash writes files in the ways the audit store does, syncs some of
// it, and checks what a running reader sees before the crash and what is
// left after it.
func TestCrash(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	tests := []struct {
		name string
		// write leaves the file at path as before the crash (a reader
		// sees it) and says what must be left after it.
		write        func(t *testing.T, path string) (before, after []byte)
		existsBefore bool
	}{
		{
			name: "synced data survives, unsynced does not",
			write: func(t *testing.T, path string) ([]byte, []byte) {
				f := open(t, path, os.O_RDWR|os.O_CREATE)
				_, err := f.Write([]byte("durable "))
				require.NoError(t, err)
				require.NoError(t, f.Sync())
				_, err = f.Write([]byte("lost"))
				require.NoError(t, err)
				return []byte("durable lost"), []byte("durable ")
			},
		},
		{
			name: "a file never synced is empty",
			write: func(t *testing.T, path string) ([]byte, []byte) {
				f := open(t, path, os.O_RDWR|os.O_CREATE)
				_, err := f.Write([]byte("lost"))
				require.NoError(t, err)
				return []byte("lost"), []byte{}
			},
		},
		{
			name: "WriteAt into a preallocated file, fdatasync",
			write: func(t *testing.T, path string) ([]byte, []byte) {
				f := open(t, path, os.O_RDWR|os.O_CREATE)
				require.NoError(t, syscall.Fallocate(int(f.Fd()), 0, 0, 10000))
				require.NoError(t, f.Sync())
				_, err := f.WriteAt([]byte("first\n"), 0)
				require.NoError(t, err)
				_, err = f.WriteAt([]byte("second\n"), 6)
				require.NoError(t, err)
				fdatasync(t, f)
				_, err = f.WriteAt([]byte("third\n"), 13)
				require.NoError(t, err)
				want := make([]byte, 10000)
				copy(want, "first\nsecond\n")
				before := bytes.Clone(want)
				copy(before[13:], "third\n")
				return before, want
			},
		},
		{
			name: "an unsynced fallocate does not grow the file",
			write: func(t *testing.T, path string) ([]byte, []byte) {
				f := open(t, path, os.O_RDWR|os.O_CREATE)
				require.NoError(t, syscall.Fallocate(int(f.Fd()), 0, 0, 5000))
				return make([]byte, 5000), []byte{}
			},
		},
		{
			name: "FALLOC_FL_KEEP_SIZE keeps the size",
			write: func(t *testing.T, path string) ([]byte, []byte) {
				f := open(t, path, os.O_RDWR|os.O_CREATE)
				_, err := f.Write([]byte("abc"))
				require.NoError(t, err)
				require.NoError(t, syscall.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, 1<<20))
				require.NoError(t, f.Sync())
				return []byte("abc"), []byte("abc")
			},
		},
		{
			name: "O_APPEND appends across pages",
			write: func(t *testing.T, path string) ([]byte, []byte) {
				f := open(t, path, os.O_RDWR|os.O_CREATE|os.O_APPEND)
				first := bytes.Repeat([]byte("a"), 5000)
				_, err := f.Write(first)
				require.NoError(t, err)
				require.NoError(t, f.Sync())
				_, err = f.Write([]byte("bbb"))
				require.NoError(t, err)
				return append(bytes.Clone(first), "bbb"...), first
			},
		},
		{
			name: "an unsynced truncation is undone, and what it cut reads as zeros",
			write: func(t *testing.T, path string) ([]byte, []byte) {
				f := open(t, path, os.O_RDWR|os.O_CREATE)
				data := bytes.Repeat([]byte("x"), 10000)
				_, err := f.Write(data)
				require.NoError(t, err)
				require.NoError(t, f.Sync())
				require.NoError(t, f.Truncate(100))
				require.NoError(t, f.Truncate(5000))
				before := make([]byte, 5000)
				copy(before, data[:100])
				return before, data
			},
		},
		{
			name: "a synced truncation stays",
			write: func(t *testing.T, path string) ([]byte, []byte) {
				f := open(t, path, os.O_RDWR|os.O_CREATE)
				_, err := f.Write(bytes.Repeat([]byte("y"), 9000))
				require.NoError(t, err)
				require.NoError(t, f.Truncate(4100))
				require.NoError(t, f.Truncate(4200))
				require.NoError(t, f.Sync())
				want := make([]byte, 4200)
				copy(want, bytes.Repeat([]byte("y"), 4100))
				return want, want
			},
		},
		{
			name: "O_TRUNC of a synced file is undone",
			write: func(t *testing.T, path string) ([]byte, []byte) {
				require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))
				f := open(t, path, os.O_RDWR)
				require.NoError(t, f.Sync())
				f.Close()
				g := open(t, path, os.O_RDWR|os.O_TRUNC)
				_, err := g.Write([]byte("new!"))
				require.NoError(t, err)
				return []byte("new!"), []byte("old")
			},
		},
	}
	var afters []func(*testing.T)
	for i, tt := range tests {
		path := filepath.Join(fsys.Dir(), "file"+string(rune('a'+i)))
		var after []byte
		t.Run(tt.name+"/before", func(t *testing.T) {
			var before []byte
			before, after = tt.write(t, path)
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, before, got)
			fi, err := os.Stat(path)
			require.NoError(t, err)
			require.EqualValues(t, len(before), fi.Size(), "stat sees unsynced sizes")
		})
		afters = append(afters, func(t *testing.T) {
			t.Run(tt.name+"/after", func(t *testing.T) {
				got, err := os.ReadFile(path)
				require.NoError(t, err, "created files stay: the directory is always synced")
				require.Equal(t, len(after), len(got))
				require.Equal(t, after, got)
			})
		})
	}
	fsys.Crash()
	for _, check := range afters {
		check(t)
	}
}

// TestHardLinksShareUnsyncedData links a file with unsynced data: the
// link sees it, a sync through the link makes it durable for both.
func TestHardLinksShareUnsyncedData(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	a, b := filepath.Join(fsys.Dir(), "a"), filepath.Join(fsys.Dir(), "b")
	f := open(t, a, os.O_RDWR|os.O_CREATE)
	_, err := f.Write([]byte("shared"))
	require.NoError(t, err)
	require.NoError(t, os.Link(a, b))
	got, err := os.ReadFile(b)
	require.NoError(t, err)
	require.Equal(t, "shared", string(got))
	g := open(t, b, os.O_RDONLY)
	require.NoError(t, g.Sync(), "a sync through any name or descriptor syncs the inode")
	f.Close()
	g.Close()
	fsys.Crash()
	for _, p := range []string{a, b} {
		got, err := os.ReadFile(p)
		require.NoError(t, err)
		require.Equal(t, "shared", string(got))
	}
}

// TestReplaceAndCreateFiles does what the audit store's atomic file
// helpers do: write and sync a temporary file, rename it over an existing
// file or hard-link it to a new name, sync the directory; the new content
// survives a crash. It then checks that an inode number reused by a new
// file does not inherit a removed file's unsynced data.
func TestReplaceAndCreateFiles(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	dir := fsys.Dir()
	place := func(path, data string, how func(string, string) error) {
		tmp, err := os.CreateTemp(dir, "tmp-*")
		require.NoError(t, err)
		_, err = tmp.WriteString(data)
		require.NoError(t, err)
		require.NoError(t, tmp.Sync())
		require.NoError(t, tmp.Close())
		require.NoError(t, how(tmp.Name(), path))
		os.Remove(tmp.Name())
		require.NoError(t, syncDir(dir))
	}
	head := filepath.Join(dir, "head")
	place(head, "one", os.Rename)
	place(head, "two", os.Rename)
	key := filepath.Join(dir, "key")
	place(key, "secret", os.Link)
	require.ErrorIs(t, os.Link(head, key), os.ErrExist)

	// Unsynced data of a file removed: the next file may get its inode.
	for range 20 {
		p := filepath.Join(dir, "gone")
		require.NoError(t, os.WriteFile(p, []byte("unsynced"), 0o600))
		require.NoError(t, os.Remove(p))
		f := open(t, p, os.O_RDWR|os.O_CREATE|os.O_EXCL)
		fi, err := f.Stat()
		require.NoError(t, err)
		require.Zero(t, fi.Size())
		require.NoError(t, f.Close())
		require.NoError(t, os.Remove(p))
	}

	fsys.Crash()
	for path, want := range map[string]string{head: "two", key: "secret"} {
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, want, string(got))
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 2, "the temporary files are gone")
}

// TestFlock takes an exclusive flock on a lock file: a second descriptor
// cannot take it until the first lets go.
func TestFlock(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	path := filepath.Join(fsys.Dir(), "lock")
	a := open(t, path, os.O_RDWR|os.O_CREATE)
	b := open(t, path, os.O_RDWR)
	require.NoError(t, syscall.Flock(int(a.Fd()), syscall.LOCK_EX|syscall.LOCK_NB))
	require.ErrorIs(t, syscall.Flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB), syscall.EWOULDBLOCK)
	require.NoError(t, a.Close())
	require.NoError(t, syscall.Flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB))
}

// TestHungSyncs hangs syncs of files and of a directory: they block
// until released, and then succeed.
func TestHungSyncs(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// Two files: the kernel serialises the syncs of one file.
	f := open(t, filepath.Join(fsys.Dir(), "f"), os.O_RDWR|os.O_CREATE)
	g := open(t, filepath.Join(fsys.Dir(), "g"), os.O_RDWR|os.O_CREATE)
	for _, file := range []*os.File{f, g} {
		_, err := file.Write([]byte("data"))
		require.NoError(t, err)
	}
	gfd := int(g.Fd())

	fsys.HangSyncs()
	done := make(chan error, 3)
	go func() { done <- f.Sync() }()
	go func() { done <- unix.Fdatasync(gfd) }()
	go func() { done <- syncDir(fsys.Dir()) }()
	require.NoError(t, fsys.WaitHungSyncs(ctx, 3))
	select {
	case err := <-done:
		t.Fatalf("a hung sync returned: %v", err)
	default:
	}
	synced := fsys.Syncs()
	fsys.ReleaseSyncs()
	for range 3 {
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-ctx.Done():
			t.Fatal("the released syncs did not return")
		}
	}
	require.Equal(t, synced+3, fsys.Syncs())
	require.NoError(t, f.Sync(), "syncs no longer hang")

	short, cancelShort := context.WithCancel(ctx)
	cancelShort()
	require.ErrorIs(t, fsys.WaitHungSyncs(short, 1), context.Canceled)
}

// TestFailedSyncs fails syncs with EIO: the data stays visible but is
// not durable; after Heal, syncs succeed again.
func TestFailedSyncs(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	path := filepath.Join(fsys.Dir(), "f")
	f := open(t, path, os.O_RDWR|os.O_CREATE)
	_, err := f.Write([]byte("data"))
	require.NoError(t, err)

	fsys.FailSyncs(syscall.EIO)
	require.ErrorIs(t, f.Sync(), syscall.EIO)
	require.ErrorIs(t, unix.Fdatasync(int(f.Fd())), syscall.EIO)
	require.ErrorIs(t, syncDir(fsys.Dir()), syscall.EIO)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "data", string(got))

	f.Close()
	fsys.Crash()
	got, err = os.ReadFile(path)
	require.NoError(t, err)
	require.Empty(t, got, "a failed sync made nothing durable")

	g := open(t, path, os.O_RDWR)
	_, err = g.Write([]byte("again"))
	require.NoError(t, err)
	require.NoError(t, g.Sync(), "a crash ends the faults")
	fsys.FailSyncs(syscall.EIO)
	fsys.Heal()
	require.NoError(t, g.Sync())
}

// TestFailedWrites fails writes and growing fallocates with ENOSPC or
// EIO until Heal.
func TestFailedWrites(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	tests := []struct {
		name  string
		file  string
		errno syscall.Errno
	}{
		{name: "disk full", file: "enospc", errno: syscall.ENOSPC},
		{name: "I/O error", file: "eio", errno: syscall.EIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := open(t, filepath.Join(fsys.Dir(), tt.file), os.O_RDWR|os.O_CREATE)
			fsys.FailWrites(tt.errno)
			_, err := f.WriteAt([]byte("x"), 0)
			require.ErrorIs(t, err, tt.errno)
			require.ErrorIs(t, syscall.Fallocate(int(f.Fd()), 0, 0, 4096), tt.errno)
			fi, err := f.Stat()
			require.NoError(t, err)
			require.Zero(t, fi.Size())
			fsys.Heal()
			_, err = f.WriteAt([]byte("x"), 0)
			require.NoError(t, err)
		})
	}
}

// TestDirIsAMountPoint: Dir is the FUSE mount, not the backing
// directory.
func TestDirIsAMountPoint(t *testing.T) {
	t.Parallel()
	fsys := faultfs.Mount(t)
	var st, parent syscall.Stat_t
	require.NoError(t, syscall.Stat(fsys.Dir(), &st))
	require.NoError(t, syscall.Stat(filepath.Dir(fsys.Dir()), &parent))
	require.NotEqual(t, parent.Dev, st.Dev)
	mounts, err := os.ReadFile("/proc/self/mounts")
	require.NoError(t, err)
	require.Contains(t, string(mounts), "faultfs "+fsys.Dir()+" fuse.faultfs ")
}
