package faultfs

import (
	"context"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is a loopback node whose file data goes through the overlay and
// whose syncs go through the faults. What it does not override (lookup
// aside: it corrects the size), go-fuse's loopback does: namespace
// operations reach the backing directory at once.
type node struct {
	*fs.LoopbackNode
	fs *FS
}

var (
	_ fs.NodeWrapChilder    = (*node)(nil)
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeTmpfiler       = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeStatxer        = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeReader         = (*node)(nil)
	_ fs.NodeWriter         = (*node)(nil)
	_ fs.NodeWritever       = (*node)(nil)
	_ fs.NodeFsyncer        = (*node)(nil)
	_ fs.NodeAllocater      = (*node)(nil)
	_ fs.NodeLseeker        = (*node)(nil)
	_ fs.NodeCopyFileRanger = (*node)(nil)
	_ fs.FileReleaser       = (*handle)(nil)
	_ fs.FileFlusher        = (*handle)(nil)
	_ fs.FileReaddirenter   = (*dirHandle)(nil)
	_ fs.FileSeekdirer      = (*dirHandle)(nil)
	_ fs.FileReleasedirer   = (*dirHandle)(nil)
)

// WrapChild makes every node of the tree a faultfs node.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*fs.LoopbackNode), fs: n.fs}
}

// ino keys the overlay: the inode number, which go-fuse's loopback
// derives from the backing file's, so that hard links share one overlay.
func (n *node) ino() uint64 { return n.StableAttr().Ino }

func (n *node) backingPath() string {
	return filepath.Join(n.RootData.Path, n.Path(n.RootData.RootNode.EmbeddedInode()))
}

// handle is an open regular file: the backing file's descriptor, opened
// for reading and writing whatever the caller asked (the overlay reads
// pages and sync writes them through it; the kernel checked the caller's
// access). It deliberately has no PassthroughFd: with FUSE passthrough the
// kernel would read and write the backing file directly, past the
// overlay.
type handle struct{ fd int }

// Release closes the backing file.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	return fs.ToErrno(syscall.Close(h.fd))
}

// Flush is close(2) of one of the caller's descriptors: nothing to do.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

// dirHandle is an open directory: go-fuse's loopback directory stream,
// without its Fsyncdir, so that directory syncs reach node.Fsync and its
// faults.
type dirHandle struct{ stream fs.FileHandle }

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	return d.stream.(fs.FileReaddirenter).Readdirent(ctx)
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	return d.stream.(fs.FileSeekdirer).Seekdir(ctx, off)
}

func (d *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {
	d.stream.(fs.FileReleasedirer).Releasedir(ctx, releaseFlags)
}

// OpendirHandle opens the directory's stream.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	stream, fuseFlags, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return &dirHandle{stream: stream}, fuseFlags, 0
}

// openBacking opens the backing file at path for reading and writing,
// with the caller's other flags but those the overlay implements
// (O_TRUNC) or the kernel does (O_APPEND: it sends the offset).
func openBacking(path string, flags uint32, mode uint32) (int, error) {
	flags &^= syscall.O_ACCMODE | syscall.O_APPEND | syscall.O_TRUNC | fuse.FMODE_EXEC
	return syscall.Open(path, int(flags)|syscall.O_RDWR|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, mode)
}

// Open opens the file; O_TRUNC cuts the overlay, not the backing file.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fd, err := openBacking(n.backingPath(), flags, 0)
	if err != nil {
		return nil, 0, fs.ToErrno(err)
	}
	h := &handle{fd: fd}
	if flags&syscall.O_TRUNC != 0 {
		if errno := n.truncate(h, 0); errno != 0 {
			syscall.Close(fd)
			return nil, 0, errno
		}
	}
	return h, 0, 0
}

// Create creates (or, without O_EXCL, opens) the file name.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	path := filepath.Join(n.backingPath(), name)
	// The kernel holds the directory's lock: nobody creates name meanwhile.
	var st syscall.Stat_t
	created := syscall.Lstat(path, &st) == syscall.ENOENT
	ch, lf, _, errno := n.LoopbackNode.Create(ctx, name, flags&^syscall.O_TRUNC, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	lf.(fs.FileReleaser).Release(ctx) // opened for the caller's access only: see handle
	fd, err := openBacking(path, flags&^(syscall.O_CREAT|syscall.O_EXCL), 0)
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	h := &handle{fd: fd}
	child := ch.Operations().(*node)
	if created {
		n.fs.forget(child.ino()) // the overlay of a removed file whose inode number was reused
	} else if flags&syscall.O_TRUNC != 0 {
		if errno := child.truncate(h, 0); errno != 0 {
			syscall.Close(fd)
			return nil, nil, 0, errno
		}
	}
	n.fs.fixSize(child.ino(), &out.Attr)
	return ch, h, 0, 0
}

// Mknod creates a file (or a device, a fifo) name.
func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
	if errno == 0 {
		n.fs.forget(ch.StableAttr().Ino)
	}
	return ch, errno
}

// Tmpfile (O_TMPFILE) is not supported: the caller falls back to a name.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EOPNOTSUPP
}

// CopyFileRange is not supported: the caller falls back to reading and
// writing, through the overlay.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP
}

// Lookup finds name, with the size its overlay gives it.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno == 0 {
		n.fs.fixSize(ch.StableAttr().Ino, &out.Attr)
	}
	return ch, errno
}

// Link makes name a hard link to target, which shares its overlay.
func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if t, ok := target.(*node); ok {
		target = t.LoopbackNode // the loopback checks the type of what it links
	}
	ch, errno := n.LoopbackNode.Link(ctx, target, name, out)
	if errno == 0 {
		n.fs.fixSize(ch.StableAttr().Ino, &out.Attr)
	}
	return ch, errno
}

// Getattr stats the file (its open backing file, if there is one), with
// the size its overlay gives it.
func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*handle); ok {
		var st syscall.Stat_t
		if err := syscall.Fstat(h.fd, &st); err != nil {
			return fs.ToErrno(err)
		}
		out.FromStat(&st)
	} else if errno := n.LoopbackNode.Getattr(ctx, nil, out); errno != 0 {
		return errno
	}
	n.fs.fixSize(n.ino(), &out.Attr)
	return 0
}

// Statx is Getattr's statx(2).
func (n *node) Statx(ctx context.Context, f fs.FileHandle, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	if h, ok := f.(*handle); ok {
		var st unix.Statx_t
		if err := unix.Statx(h.fd, "", int(flags)|unix.AT_EMPTY_PATH, int(mask), &st); err != nil {
			return fs.ToErrno(err)
		}
		out.FromStatx(&st)
	} else if errno := n.LoopbackNode.Statx(ctx, nil, flags, mask, out); errno != 0 {
		return errno
	}
	n.fs.mu.Lock()
	if o := n.fs.files[n.ino()]; o != nil && out.Mode&syscall.S_IFMT == syscall.S_IFREG {
		out.Size = uint64(o.size)
		out.Blocks = (out.Size + 511) / 512
	}
	n.fs.mu.Unlock()
	return 0
}

// Setattr changes attributes; a size goes to the overlay.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		h, _ := f.(*handle)
		if h == nil {
			fd, err := syscall.Open(n.backingPath(), syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
			if err != nil {
				return fs.ToErrno(err)
			}
			defer syscall.Close(fd)
			h = &handle{fd: fd}
		}
		if errno := n.truncate(h, int64(size)); errno != 0 {
			return errno
		}
		in.Valid &^= fuse.FATTR_SIZE
	}
	if in.Valid&^(fuse.FATTR_FH|fuse.FATTR_LOCKOWNER) != 0 {
		if errno := n.LoopbackNode.Setattr(ctx, nil, in, out); errno != 0 {
			return errno
		}
	}
	return n.Getattr(ctx, f, out)
}

// truncate sets the file's size in its overlay.
func (n *node) truncate(h *handle, size int64) syscall.Errno {
	n.fs.mu.Lock()
	defer n.fs.mu.Unlock()
	o, errno := n.fs.overlay(n.ino(), h.fd)
	if errno != 0 {
		return errno
	}
	return fs.ToErrno(o.truncate(h.fd, size))
}

// Read reads through the overlay.
func (n *node) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := f.(*handle)
	if !ok {
		return nil, syscall.EBADF
	}
	n.fs.mu.Lock()
	defer n.fs.mu.Unlock()
	if o := n.fs.files[n.ino()]; o != nil {
		k, err := o.read(h.fd, dest, off)
		if err != nil {
			return nil, fs.ToErrno(err)
		}
		return fuse.ReadResultData(dest[:k]), 0
	}
	k, err := syscall.Pread(h.fd, dest, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

// Write writes to the overlay, unless writes fail.
func (n *node) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	h, ok := f.(*handle)
	if !ok {
		return 0, syscall.EBADF
	}
	if errno := n.fs.writeFault(); errno != 0 {
		return 0, errno
	}
	n.fs.mu.Lock()
	defer n.fs.mu.Unlock()
	o, errno := n.fs.overlay(n.ino(), h.fd)
	if errno != 0 {
		return 0, errno
	}
	if err := o.write(h.fd, data, off); err != nil {
		return 0, fs.ToErrno(err)
	}
	return uint32(len(data)), 0
}

// Writev is Write of data in pieces.
func (n *node) Writev(ctx context.Context, f fs.FileHandle, data [][]byte, off int64) (uint32, syscall.Errno) {
	var all []byte
	for _, d := range data {
		all = append(all, d...)
	}
	return n.Write(ctx, f, all, off)
}

// Allocate is fallocate: mode 0 grows the overlay's size (and reserves
// the space in the backing file at once, so that a full disk answers
// ENOSPC here), FALLOC_FL_KEEP_SIZE only reserves.
func (n *node) Allocate(ctx context.Context, f fs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	h, ok := f.(*handle)
	if !ok {
		return syscall.EBADF
	}
	if mode&^unix.FALLOC_FL_KEEP_SIZE != 0 {
		return syscall.EOPNOTSUPP
	}
	if mode == 0 {
		if errno := n.fs.writeFault(); errno != 0 {
			return errno
		}
	}
	if err := unix.Fallocate(h.fd, unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(size)); err != nil {
		return fs.ToErrno(err)
	}
	if mode != 0 {
		return 0
	}
	n.fs.mu.Lock()
	defer n.fs.mu.Unlock()
	o, errno := n.fs.overlay(n.ino(), h.fd)
	if errno != 0 {
		return errno
	}
	o.size = max(o.size, int64(off+size))
	return 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE as for a file without holes (the
// kernel answers the other whences itself).
func (n *node) Lseek(ctx context.Context, f fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	var attr fuse.AttrOut
	if errno := n.Getattr(ctx, f, &attr); errno != 0 {
		return 0, errno
	}
	if off >= attr.Size {
		return 0, syscall.ENXIO
	}
	switch whence {
	case unix.SEEK_DATA:
		return off, 0
	case unix.SEEK_HOLE:
		return attr.Size, 0
	}
	return 0, syscall.EINVAL
}

// Fsync is fsync and fdatasync of a file, which make its overlay
// durable, and of a directory, whose entries always are: both wait while
// syncs hang and fail while they fail.
func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if errno := n.fs.syncFault(ctx, filepath.Base(n.backingPath())); errno != 0 {
		return errno
	}
	if h, ok := f.(*handle); ok {
		n.fs.mu.Lock()
		o := n.fs.files[n.ino()]
		var err error
		if o != nil {
			err = o.apply(h.fd)
		}
		if err == nil {
			delete(n.fs.files, n.ino())
		}
		n.fs.mu.Unlock()
		if err != nil {
			return fs.ToErrno(err)
		}
	}
	n.fs.synced()
	return 0
}
