package segstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/internal/atomicfile"
)

// nextFile is the next segment, prepared (zero-filled and fsynced) in the
// background while the active one fills, and renamed into place at the
// seal. Zero-filled, not only fallocated: on ext4 the first write into
// each fallocated block converts it from "unwritten", which costs a
// metadata write per sync, and a batch of 30 records starts a new block
// nearly every time. Measured here (audit/segstore/sync_bench_test.go):
// a batch of 32 records synced in ~106 us into a zero-filled segment,
// ~183 us into a fallocated one, ~198 us appended to a growing file.
const nextFile = "next.segment"

// openActive opens the active segment, whose first record has sequence
// first and extends base, verifies its records, cuts an incomplete last
// one and anything after it, and prepares the file for appends. When
// there is none, s.active stays nil. It returns the hash of the record of sequence want if the
// segment holds it or base is it (nil otherwise).
func (s *Store) openActive(first uint64, base audit.Head, want uint64) (*[32]byte, error) {
	s.head = base
	path := s.path(SegmentName(first))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// A new log, or a stop between a seal and the next segment: Open
		// starts it once it knows the log is to be appended to, so that a
		// refused Open leaves the directory as it found it.
		var hashAt *[32]byte
		if want == base.Sequence && want > 0 {
			hashAt = &base.Hash
		}
		return hashAt, nil
	}
	if err != nil {
		return nil, err
	}
	var file File = f
	if s.cfg.wrapFile != nil {
		file = s.cfg.wrapFile(f)
	}
	a := &segment{first: first, path: path, file: file, fd: f, prevHash: base.Hash, mem: newMemIndex()}
	s.active = a
	var hashAt *[32]byte
	if want == base.Sequence && want > 0 {
		hashAt = &base.Hash
	}
	var offset, lineStart int64
	res, err := audit.Verify(&untilZero{r: io.NewSectionReader(file, 0, 1<<62)},
		audit.WithStart(base),
		audit.WithLineFunc(func(_ uint64, line []byte) {
			lineStart = offset
			offset += int64(len(line)) + 1
		}),
		audit.WithRecordFunc(func(ev *audit.Event) {
			a.mem.addFields(ev.Sequence, lineStart, ev.Type, ev.ExecutionID, ev.PlanID, ev.UserID)
			s.track(ev.Sequence, ev.Type, ev.ExecutionID, ev.PlanID, ev.UserID)
			s.noteLoggedClaim(ev)
			if ev.Sequence == want {
				if h, err := audit.ParseHash(ev.Hash); err == nil {
					hashAt = &h
				}
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("segment %s: %w", path, err)
	}
	s.recovery.VerifiedRecords = res.Head.Sequence - base.Sequence
	s.recovery.TruncatedBytes = res.TrailingBytes
	s.head = res.Head
	a.written = res.Bytes
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// Past the records there must be nothing but zeros: a torn record, or
	// writes of a batch never synced that reached the disk out of order.
	// They were never acknowledged; left there, the next appends could
	// join them to the log.
	dirty, err := lastNonZero(file, res.Bytes, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("segment %s: %w", path, err)
	}
	size := fi.Size()
	if !s.cfg.preallocate {
		if size != res.Bytes {
			if err := file.Truncate(res.Bytes); err != nil {
				return nil, fmt.Errorf("cut segment %s: %w", path, err)
			}
			size = res.Bytes
		}
	} else {
		if dirty > res.Bytes {
			if err := zeroFill(file, res.Bytes, dirty); err != nil {
				return nil, fmt.Errorf("clear the end of segment %s: %w", path, err)
			}
		}
		if size < s.cfg.segmentBytes {
			// Cut at a seal that did not complete, or written without
			// preallocation: preallocate the rest.
			if err := zeroFill(file, size, s.cfg.segmentBytes); err != nil {
				return nil, fmt.Errorf("preallocate segment %s: %w", path, err)
			}
			size = s.cfg.segmentBytes
		}
	}
	if err := file.Sync(); err != nil {
		return nil, fmt.Errorf("fsync %s: %w", path, err)
	}
	a.fileSize = size
	if a.ident, err = os.Stat(path); err != nil {
		return nil, err
	}
	return hashAt, nil
}

// untilZero reads r up to its first zero byte: the end of the records in
// a preallocated segment, since records never hold one (JSON escapes it).
type untilZero struct {
	r    io.Reader
	done bool
}

func (u *untilZero) Read(p []byte) (int, error) {
	if u.done {
		return 0, io.EOF
	}
	n, err := u.r.Read(p)
	if i := bytes.IndexByte(p[:n], 0); i >= 0 {
		u.done = true
		return i, nil
	}
	return n, err
}

// lastNonZero returns the end of the last non-zero byte of f in [from,
// to), or from if there is none.
func lastNonZero(f io.ReaderAt, from, to int64) (int64, error) {
	end := from
	buf := make([]byte, 1<<20)
	for pos := from; pos < to; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), to-pos)], pos)
		for i := n - 1; i >= 0; i-- {
			if buf[i] != 0 {
				end = pos + int64(i) + 1
				break
			}
		}
		pos += int64(n)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return 0, err
		}
	}
	return end, nil
}

// zeroFill writes zeros to f from offset from to offset to.
func zeroFill(f io.WriterAt, from, to int64) error {
	buf := make([]byte, 1<<20)
	for pos := from; pos < to; {
		n := min(int64(len(buf)), to-pos)
		if _, err := f.WriteAt(buf[:n], pos); err != nil {
			return err
		}
		pos += n
	}
	return nil
}

// fdatasync syncs f's data and the metadata needed to read it back. A
// wrapped file (WithFileWrapper) is synced with its own Sync.
func fdatasync(f File) error {
	osf, ok := f.(*os.File)
	if !ok {
		return f.Sync()
	}
	for {
		err := syscall.Fdatasync(int(osf.Fd()))
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// startSegment starts the active segment after s.head (after a seal
// that could not start it, or in a new log).
func (s *Store) startSegment() error {
	f, err := s.takeNext()
	if err != nil {
		return err
	}
	return s.install(f)
}

// roll seals the active segment and starts the next one. It makes the
// next segment's file and reserves the tree file's space for it first,
// so that a full disk is found before anything changes: the batch is then
// refused as unavailable, and the store is as it was.
func (s *Store) roll() error {
	f, err := s.takeNext()
	if err != nil {
		return err
	}
	if err := s.seal(); err != nil {
		s.putBackNext(f)
		return err
	}
	return s.install(f)
}

// takeNext returns the next segment's file (nextFile): the one prepared
// in the background if it is ready, else one made now, so that a full
// disk is found now, before any record is written, rather than in the
// middle of one. It also reserves the tree file's space for the segment.
// Its errors are audit.ErrUnavailable and leave the store as it was.
func (s *Store) takeNext() (*os.File, error) {
	s.next.wg.Wait() // a preparation under way finishes first
	path := s.path(nextFile)
	var f *os.File
	var err error
	if s.next.take() {
		f, err = os.OpenFile(path, os.O_RDWR, 0)
	}
	if f == nil {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err == nil && s.cfg.preallocate {
			// Reserve first, so that a full disk is found at once; then
			// zero-fill, as the background would have (tens of
			// milliseconds, on the append path only when the background
			// preparation failed, and for a new log's first segment).
			err = syscall.Fallocate(int(f.Fd()), 0, 0, s.cfg.segmentBytes)
			if err == nil {
				err = zeroFill(f, 0, s.cfg.segmentBytes)
			}
		}
		if err == nil {
			err = f.Sync()
		}
		if err == nil {
			err = atomicfile.SyncDir(s.dir)
		}
		if err != nil && f != nil {
			f.Close()
			os.Remove(path)
		}
	}
	if err == nil {
		if err = s.reserveTree(); err != nil {
			s.putBackNext(f)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: make the next audit log segment: %w", audit.ErrUnavailable, err)
	}
	return f, nil
}

// putBackNext keeps f, a complete next segment, for the next attempt.
func (s *Store) putBackNext(f *os.File) {
	f.Close()
	s.next.mu.Lock()
	s.next.ready = true
	s.next.mu.Unlock()
}

// reserveTree reserves space in the tree file for a segment's hashes
// (fallocate with FALLOC_FL_KEEP_SIZE: allocated past its end, its size
// unchanged), so that appending hashes after a batch's records does not
// fail on a full disk: a segment's records are at least about 128 bytes
// each, for 64 bytes of hashes on average. Records smaller than that
// could outgrow it.
func (s *Store) reserveTree() error {
	if s.tree == nil {
		return nil // Open reserves once the tree file is open
	}
	fi, err := s.tree.Stat()
	if err != nil {
		return err
	}
	const keepSize = 1 // FALLOC_FL_KEEP_SIZE
	return syscall.Fallocate(int(s.tree.Fd()), keepSize, fi.Size(), s.cfg.segmentBytes/2)
}

// install makes f, the next segment's file, the active segment: renamed
// into place under its first sequence. On failure there is no active
// segment, which the next append or ping starts again.
func (s *Store) install(f *os.File) error {
	first := s.head.Sequence + 1
	path := s.path(SegmentName(first))
	err := os.Rename(s.path(nextFile), path)
	if err == nil {
		err = atomicfile.SyncDir(s.dir)
	}
	var ident os.FileInfo
	if err == nil {
		ident, err = f.Stat()
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("%w: start audit log segment %s: %w", audit.ErrUnavailable, path, err)
	}
	var file File = f
	if s.cfg.wrapFile != nil {
		file = s.cfg.wrapFile(f)
	}
	s.active = &segment{first: first, path: path, file: file, fd: f, ident: ident, fileSize: ident.Size(),
		prevHash: s.head.Hash, mem: newMemIndex()}
	s.publish()
	s.prepareNext()
	return nil
}

// seal ends the active segment: syncs its records, cuts the file to
// them, syncs the tree file, and appends the segment's seal to the seal
// file. An I/O error fails the store for good, as a write error does,
// except a seal line that could not be written and was taken back (a
// full disk): the segment then stays the active one, cut to its records,
// and the seal is tried again with the next batch.
func (s *Store) seal() error {
	a := s.active
	if a.fileSize != a.written {
		if err := a.file.Truncate(a.written); err != nil {
			return s.fail(fmt.Errorf("cut %s to its records: %w", a.path, err))
		}
		a.fileSize = a.written
	}
	// One fsync for the records and the new size.
	if err := a.file.Sync(); err != nil {
		return s.fail(fmt.Errorf("fsync %s: %w", a.path, err))
	}
	// The seal vouches for the tree hashes up to its last record (see
	// openTree).
	if err := s.tree.Sync(); err != nil {
		return s.fail(fmt.Errorf("fsync tree file: %w", err))
	}
	// Open finds lost request entries in the active segment's records
	// only: those of the records sealed now must be durable (requests.go).
	if err := s.requests.sync(); err != nil {
		return s.fail(err)
	}
	sl := newSeal(a, s.head, s.open)
	if err := s.appendSeal(sl); err != nil {
		return err
	}
	s.publish()
	// The index takes the segment's memIndex before readers see it
	// sealed, so that no lookup finds it in neither.
	s.index.sealed(sl, a.mem)
	v := *s.view.Load()
	v.sealed = append(v.sealed[:len(v.sealed):len(v.sealed)], sl)
	v.activeFirst, v.activeSize, v.activeMem = s.head.Sequence+1, 0, nil
	s.view.Store(&v)
	err := a.file.Close()
	s.active = nil
	if err != nil {
		return s.fail(fmt.Errorf("close %s: %w", a.path, err))
	}
	return nil
}
