// Package faultfs is a FUSE file system for tests that must run a real
// process on a failing disk: it passes everything through to a backing
// directory and, on command, hangs fsync, fails fsync or writes with an
// errno, or simulates a crash that loses every write not made durable.
//
// The test process serves the file system itself (go-fuse v2, mounted
// with mount(2), no fusermount binary), so Mount needs root and
// /dev/fuse; without them a test skips, or fails under CI=true.
//
// # The crash model
//
// In the spirit of Jepsen's LazyFS, data that no successful fsync or
// fdatasync of its file covered is lost at a crash:
//
//   - Data writes, truncations and size changes by fallocate are kept in
//     an in-memory overlay per file (per inode: hard links share it) and
//     reach the backing file only when that file is synced (fsync and
//     fdatasync alike). Reads and stat see the overlay, so a running
//     program cannot tell.
//   - Namespace operations (create, mkdir, rename, link, unlink, rmdir)
//     are applied to the backing directory at once: the model is a
//     directory that is always synced. A program that syncs its
//     directories after a rename (the audit store does) loses nothing by
//     that simplification; one that forgets is not caught.
//   - Crash discards every overlay, then unmounts and mounts again, so
//     that no kernel page or attribute cache can serve bytes the crash
//     lost. Every process using the file system must have exited first
//     (as after a real crash): a busy mount fails the test.
//
// A failed fsync keeps the overlay: the data stays visible and is lost at
// the next Crash unless a later sync succeeds (PostgreSQL's rule applies:
// after EIO, trust nothing a sync did not confirm). The backing files are
// never fsynced themselves: the crash is simulated, the machine does not
// lose power.
//
// # Limits
//
// fallocate supports mode 0 and FALLOC_FL_KEEP_SIZE (the space is
// reserved in the backing file at once); other modes fail with
// EOPNOTSUPP, as do O_TMPFILE and copy_file_range (callers fall back to
// reading and writing). Locks (flock, fcntl) are the kernel's own, local
// to the mount, which is enough between processes on one machine.
package faultfs
