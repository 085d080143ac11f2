package faultfs

import (
	"maps"
	"slices"
	"syscall"
)

// pageSize is the unit in which the overlay keeps unsynced data.
const pageSize = 4096

// overlay is what a file's unsynced writes and size changes made of it:
// the file a reader sees is the backing file's first keep bytes, with
// pages replaced by the overlay's, zeros elsewhere, cut or extended to
// size. Invariants: keep <= size, keep <= the backing file's size, and a
// page's bytes at or past size are zero.
type overlay struct {
	size  int64
	keep  int64
	pages map[int64]*[pageSize]byte
}

func newOverlay(backingSize int64) *overlay {
	return &overlay{size: backingSize, keep: backingSize, pages: map[int64]*[pageSize]byte{}}
}

// page returns page i, loaded from the backing file fd (what it holds
// below keep) when the overlay has none yet.
func (o *overlay) page(fd int, i int64) (*[pageSize]byte, error) {
	if p, ok := o.pages[i]; ok {
		return p, nil
	}
	p := new([pageSize]byte)
	if off := i * pageSize; off < o.keep {
		if err := preadFull(fd, p[:min(pageSize, o.keep-off)], off); err != nil {
			return nil, err
		}
	}
	o.pages[i] = p
	return p, nil
}

// write writes data at off.
func (o *overlay) write(fd int, data []byte, off int64) error {
	for len(data) > 0 {
		p, err := o.page(fd, off/pageSize)
		if err != nil {
			return err
		}
		n := copy(p[off%pageSize:], data)
		data, off = data[n:], off+int64(n)
		o.size = max(o.size, off)
	}
	return nil
}

// read fills dest from off and returns how many bytes the file has there.
func (o *overlay) read(fd int, dest []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, nil
	}
	dest = dest[:min(int64(len(dest)), o.size-off)]
	for done := 0; done < len(dest); {
		pos := off + int64(done)
		i, in := pos/pageSize, pos%pageSize
		chunk := dest[done : done+int(min(int64(len(dest)-done), pageSize-in))]
		switch p, ok := o.pages[i]; {
		case ok:
			copy(chunk, p[in:])
		case pos < o.keep:
			n := min(int64(len(chunk)), o.keep-pos)
			if err := preadFull(fd, chunk[:n], pos); err != nil {
				return 0, err
			}
			clear(chunk[n:])
		default:
			clear(chunk)
		}
		done += len(chunk)
	}
	return len(dest), nil
}

// truncate sets the size, as ftruncate does: bytes cut off read as zeros
// if the file grows again.
func (o *overlay) truncate(fd int, size int64) error {
	if size < o.size {
		if in := size % pageSize; in != 0 {
			p, err := o.page(fd, size/pageSize)
			if err != nil {
				return err
			}
			clear(p[in:])
		}
		for i := range o.pages {
			if i*pageSize >= size {
				delete(o.pages, i)
			}
		}
		o.keep = min(o.keep, size)
	}
	o.size = size
	return nil
}

// apply makes the backing file fd what the overlay says it is.
func (o *overlay) apply(fd int) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Size > o.keep {
		if err := syscall.Ftruncate(fd, o.keep); err != nil {
			return err
		}
	}
	for _, i := range slices.Sorted(maps.Keys(o.pages)) {
		off := i * pageSize
		if off >= o.size {
			continue
		}
		if err := pwriteFull(fd, o.pages[i][:min(pageSize, o.size-off)], off); err != nil {
			return err
		}
	}
	return syscall.Ftruncate(fd, o.size)
}

// preadFull reads len(b) bytes at off, zeros past the end of the file.
func preadFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := syscall.Pread(fd, b, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			clear(b)
			return nil
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

func pwriteFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := syscall.Pwrite(fd, b, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}
