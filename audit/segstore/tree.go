package segstore

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/internal/fsutil"
	"github.com/stage4/stage4/internal/atomicfile"
)

// openTree opens (or creates) the tree file and brings it to exactly the
// stored hashes of the log's records. The file is trusted up to the last
// seal, which was written after the file was fsynced, once its hashes at
// the seal's tree edge match the seal's; what follows is cut and
// recomputed from the active segment, so start-up rehashes one segment at
// most. A file that is missing, short, or does not match the seal is
// rebuilt from every segment (Recovery.TreeRebuilt), which needs them all
// in the directory.
func (s *Store) openTree(seals []seal) error {
	path := s.path(TreeFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	missing := errors.Is(err, fs.ErrNotExist)
	if missing {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
		if err == nil {
			err = atomicfile.SyncDir(s.dir)
		}
	}
	if err != nil {
		return fmt.Errorf("open tree file: %w", err)
	}
	s.tree = f
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("open tree file: %w", err)
	}
	var trusted uint64 // records whose hashes the file holds for sure
	var edge []tlog.Hash
	if n := len(seals); n > 0 {
		last := &seals[n-1]
		trusted = last.Last
		switch {
		case missing:
			s.recovery.TreeRebuilt = "the tree file was missing"
		case fi.Size() < tlog.StoredHashCount(int64(trusted))*tlog.HashSize:
			s.recovery.TreeRebuilt = fmt.Sprintf("the tree file holds %d hashes, fewer than the %d of the last sealed record %d",
				fi.Size()/tlog.HashSize, tlog.StoredHashCount(int64(trusted)), trusted)
		default:
			if edge, err = fsutil.ReadHashesAt(f, audit.EdgeIndexes(int64(trusted))); err != nil {
				return fmt.Errorf("read tree file: %w", err)
			}
			for i, h := range edge {
				if hex.EncodeToString(h[:]) != last.Tree[i] {
					s.recovery.TreeRebuilt = fmt.Sprintf("its tree edge after record %d is not the one sealed", trusted)
					break
				}
			}
		}
	}
	if s.recovery.TreeRebuilt != "" {
		if edge, err = s.rebuildTree(seals); err != nil {
			return fmt.Errorf("rebuild the tree file (%s): %w", s.recovery.TreeRebuilt, err)
		}
	}
	keep := tlog.StoredHashCount(int64(trusted)) * tlog.HashSize
	if fi, err = f.Stat(); err != nil {
		return err
	}
	if fi.Size() != keep {
		if err := f.Truncate(keep); err != nil {
			return fmt.Errorf("cut tree file: %w", err)
		}
	}
	b, err := audit.NewTreeBuilder(trusted, edge)
	if err != nil {
		return err
	}
	if a := s.active; a != nil {
		if err := s.hashSegment(b, a.file, a.written); err != nil {
			return err
		}
	}
	if b.Size() != s.head.Sequence {
		return fmt.Errorf("tree file: rehashed the log to %d records, want %d", b.Size(), s.head.Sequence)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync tree file: %w", err)
	}
	if err := s.treeWatch.KnownFile(f, tlog.StoredHashCount(int64(s.head.Sequence))*tlog.HashSize); err != nil {
		return fmt.Errorf("tree file: %w", err)
	}
	s.recovery.TreeRecomputed = s.head.Sequence - trusted
	s.head.Tree = b.Edge()
	return nil
}

// rebuildTree rewrites the tree file from every sealed segment and
// returns the edge after the last.
func (s *Store) rebuildTree(seals []seal) ([]tlog.Hash, error) {
	if err := s.tree.Truncate(0); err != nil {
		return nil, err
	}
	b, err := audit.NewTreeBuilder(0, nil)
	if err != nil {
		return nil, err
	}
	for i := range seals {
		sl := &seals[i]
		f, err := os.Open(s.path(SegmentName(sl.First)))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("segment %s is not in the directory (archived?): put it back to rebuild the tree", SegmentName(sl.First))
		}
		if err != nil {
			return nil, err
		}
		err = s.hashSegment(b, f, sl.Bytes)
		f.Close()
		if err != nil {
			return nil, err
		}
		if b.Size() != sl.Last {
			return nil, fmt.Errorf("segment %s holds records up to %d, its seal says %d", SegmentName(sl.First), b.Size(), sl.Last)
		}
	}
	return b.Edge(), nil
}

// hashSegment adds the records in the first end bytes of f to b and
// appends their stored hashes to the tree file. It does not check the
// chain: the caller verified the records, or their seal vouches for them.
func (s *Store) hashSegment(b *audit.TreeBuilder, f io.ReaderAt, end int64) error {
	return fsutil.HashRecords(b, io.NewSectionReader(f, 0, end), end, s.tree)
}

// appendTree writes the stored hashes of recs to the tree file (the
// caller holds ioMu). It is not synced with every batch: its hashes are
// recomputed from the active segment at start-up, and synced at each seal.
func (s *Store) appendTree(recs []audit.Record) error {
	buf := s.tbuf[:0]
	for i := range recs {
		for _, h := range recs[i].TreeHashes {
			buf = append(buf, h[:]...)
		}
	}
	s.tbuf = keepBuf(buf)
	if _, err := s.tree.Write(buf); err != nil {
		return s.fail(fmt.Errorf("write tree file: %w", err))
	}
	s.treeWatch.Grow(int64(len(buf)))
	return nil
}
