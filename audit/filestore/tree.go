package filestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/internal/fsutil"
)

// TreeSuffix is appended to the log's path to name its tree file: the
// stored hashes of the log's Merkle tree (see audit.Record.TreeHashes),
// 32 bytes each, in golang.org/x/mod/sumdb/tlog's stored-hash order, so
// that stored hash i is at byte offset 32*i and a log of n records has
// tlog.StoredHashCount(n) of them. Append writes a batch's hashes with
// its records, in the same call.
//
// The tree file is derived from the log, which stays the truth, so it is
// not fsynced with every durable batch (that would double the fsyncs on
// the append path): it is fsynced just before the head file is written
// (at start, about once a second while the log grows, at Close), so that
// the head file's record vouches for the tree hashes up to it. After a
// crash the tree file may be ahead of the log (hashes of a torn last
// line) or behind it, and hashes not yet fsynced may be lost or zeroed.
// So Open trusts it only up to the head file's record, after checking
// that record's leaf hash against the log, cuts what follows and
// recomputes it from the log: the records of the last second or so before
// a crash, none after a clean stop. A tree file that is missing, shorter
// than the head file's record, or whose leaf there disagrees with the log
// is rebuilt from the whole log (Recovery.TreeRebuilt). Until then, the
// hashes of durable records are read from the page cache: the same bytes
// a recomputation would give, since they are a function of those records.
const TreeSuffix = ".tree"

// treeState is the tree file's part of a Store.
type treeState struct {
	tree *os.File
	tbuf []byte // the write buffer, reused between batches
}

// trustedTail is what load notes for openTree: the bytes of the record
// the tree file is trusted up to, and where the record after it starts.
type trustedTail struct {
	seq    uint64
	line   []byte
	offset int64
}

// lineFunc returns the audit.WithLineFunc callback that fills t.
func (t *trustedTail) lineFunc() func(uint64, []byte) {
	return func(seq uint64, line []byte) {
		if seq > t.seq {
			return
		}
		t.offset += int64(len(line)) + 1
		if seq == t.seq {
			t.line = slices.Clone(line)
		}
	}
}

// openTree opens (or creates) the tree file and brings it to exactly the
// stored hashes of the log's s.recovery.Records records, trusting its
// hashes up to tail.seq (0: none), and sets the heads' tree edge.
func (s *Store) openTree(tail trustedTail) error {
	path := s.path + TreeSuffix
	records := s.recovery.Records
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	missing := errors.Is(err, fs.ErrNotExist)
	if missing {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
		if err == nil {
			err = fsutil.SyncDir(filepath.Dir(path))
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
	have := fi.Size() / tlog.HashSize

	from := tail.seq
	switch {
	case records == 0:
		from = 0
	case missing:
		from, s.recovery.TreeRebuilt = 0, "the tree file was missing"
	case from == 0:
		// No head file: nothing in the tree file is known to be durable.
	case have < tlog.StoredHashCount(int64(from)):
		from, s.recovery.TreeRebuilt = 0, fmt.Sprintf("the tree file holds %d hashes, fewer than the %d of the head file's record %d",
			have, tlog.StoredHashCount(int64(from)), from)
	default:
		leaf, err := s.readTreeHashes([]int64{tlog.StoredHashIndex(0, int64(from)-1)})
		if err != nil {
			return fmt.Errorf("read tree file: %w", err)
		}
		if leaf[0] != audit.LeafHash(tail.line) {
			from, s.recovery.TreeRebuilt = 0, fmt.Sprintf("its leaf hash of record %d is not that record's", from)
		}
	}
	offset := int64(0)
	if from > 0 {
		offset = tail.offset
	}
	keep := tlog.StoredHashCount(int64(from))
	changed := fi.Size() != keep*tlog.HashSize || from < records
	if fi.Size() != keep*tlog.HashSize {
		if err := f.Truncate(keep * tlog.HashSize); err != nil {
			return fmt.Errorf("cut tree file: %w", err)
		}
	}
	edge, err := s.readTreeHashes(audit.EdgeIndexes(int64(from)))
	if err != nil {
		return fmt.Errorf("read tree file: %w", err)
	}
	b, err := audit.NewTreeBuilder(from, edge)
	if err != nil {
		return err
	}
	if err := s.recomputeTree(b, offset); err != nil {
		return err
	}
	if b.Size() != records {
		return fmt.Errorf("tree file: rehashed the log to %d records, want %d", b.Size(), records)
	}
	if changed {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync tree file: %w", err)
		}
	}
	s.recovery.TreeRecomputed = records - from
	s.head.Tree = b.Edge()
	s.durableHead.Tree = s.head.Tree
	return nil
}

// recomputeTree adds the records from byte offset on to b and appends
// their stored hashes to the tree file.
func (s *Store) recomputeTree(b *audit.TreeBuilder, offset int64) error {
	end := s.size.Load()
	return fsutil.HashRecords(b, io.NewSectionReader(s.file, offset, end-offset), end-offset, s.tree)
}

// readTreeHashes reads stored hashes from the tree file.
func (s *Store) readTreeHashes(indexes []int64) ([]tlog.Hash, error) {
	return fsutil.ReadHashesAt(s.tree, indexes)
}

// appendTree writes the stored hashes of recs to the tree file (the
// caller holds ioMu).
func (s *Store) appendTree(recs []audit.Record) error {
	buf := s.tbuf[:0]
	for i := range recs {
		for _, h := range recs[i].TreeHashes {
			buf = append(buf, h[:]...)
		}
	}
	if cap(buf) <= keepBufBytes {
		s.tbuf = buf
	} else {
		s.tbuf = nil
	}
	if _, err := s.tree.Write(buf); err != nil {
		return s.fail(fmt.Errorf("write tree file: %w", err))
	}
	return nil
}

// ReadHashes reads stored hashes of the durable tree from the tree file.
func (s *Store) ReadHashes(_ context.Context, indexes []int64) ([]tlog.Hash, error) {
	if s.isClosed() {
		return nil, audit.ErrClosed
	}
	limit := tlog.StoredHashCount(int64(s.durable.Load().Sequence))
	for _, x := range indexes {
		if x < 0 || x >= limit {
			return nil, fmt.Errorf("tree hash %d is not in the durable tree (%d hashes)", x, limit)
		}
	}
	hashes, err := s.readTreeHashes(indexes)
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: the tree file %s was cut: %w", audit.ErrDataLoss, s.path+TreeSuffix, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read the tree file: %w", audit.ErrUnavailable, err)
	}
	return hashes, nil
}

// DurableHead returns the head after the fsynced records.
func (s *Store) DurableHead(context.Context) (audit.Head, error) {
	if s.isClosed() {
		return audit.Head{}, audit.ErrClosed
	}
	return *s.durable.Load(), nil
}

// publishDurable makes h, whose records and tree hashes are fsynced, the
// head that DurableHead and ReadHashes go by (the caller holds ioMu).
func (s *Store) publishDurable(h audit.Head) {
	s.durableHead = h
	s.durable.Store(&h)
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Reader reads the records and tree hashes of the log at a path without
// opening the store (no lock: a running stage4 may hold it): for tools
// that prove a record offline. Whatever it returns is to be checked
// against a signed checkpoint, never trusted.
type Reader struct {
	log, tree *os.File
}

// OpenReader opens the log at path and its tree file for reading.
func OpenReader(path string) (*Reader, error) {
	log, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	tree, err := os.Open(path + TreeSuffix)
	if err != nil {
		log.Close()
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	return &Reader{log: log, tree: tree}, nil
}

// Record returns the bytes of the record of sequence seq (without its
// newline), reading the log from its start: records have no index.
func (r *Reader) Record(seq uint64) ([]byte, error) {
	return fsutil.FindRecord(io.NewSectionReader(r.log, 0, 1<<62), 1, seq)
}

// ReadHashes reads stored hashes from the tree file; it is a
// tlog.HashReader.
func (r *Reader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	return fsutil.ReadHashesAt(r.tree, indexes)
}

// Close closes the files.
func (r *Reader) Close() error { return errors.Join(r.log.Close(), r.tree.Close()) }
