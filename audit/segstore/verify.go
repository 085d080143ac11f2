package segstore

import (
	"bytes"
	"cmp"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/internal/fsutil"
)

// DirResult describes a verified log directory.
type DirResult struct {
	audit.VerifyResult
	// Segments is the number of segment files verified.
	Segments int
	// Archived are the sealed segments whose files are not in the
	// directory, whose records were not checked: the chain is taken
	// across them from their seals.
	Archived []ArchivedSegment
}

// ArchivedSegment is a sealed segment not in the directory.
type ArchivedSegment struct {
	Name        string
	First, Last uint64
}

// IsDir reports whether path is a log directory (or any directory).
func IsDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// VerifyDir verifies the log in directory dir without opening the store
// (a running stage4 may hold it): the seal file's seals follow each other,
// every sealed segment in the directory holds exactly the records its
// seal states, with the hashes at both ends, and the chain runs through
// every record from sequence 1 (or from the first segment present, across
// archived ones by their seals) to the end of the active segment. opts
// (not WithProgress) apply across segments, in log order; progress, when
// not nil, is called with the bytes of all segments read so far.
func VerifyDir(dir string, progress func(bytesRead int64), opts ...audit.VerifyOption) (DirResult, error) {
	var res DirResult
	res.LastHash = audit.GenesisHash
	seals, torn, err := ReadSeals(filepath.Join(dir, SealsFile))
	if errors.Is(err, fs.ErrNotExist) && IsDir(dir) {
		err = nil // a log that never sealed a segment
	}
	if err != nil {
		return res, fmt.Errorf("verify audit log: %w", err)
	}
	_ = torn // a seal being written at a crash: its segment is still the active one
	var done int64
	withProgress := func(opts []audit.VerifyOption) []audit.VerifyOption {
		if progress == nil {
			return opts
		}
		base := done
		return append(opts, audit.WithProgress(func(n int64) { progress(base + n) }))
	}
	// Without callbacks, which need the records in log order, the sealed
	// segments are checked in parallel: each from its seal's
	// previous_hash, which the seal file chains to the seal before.
	var pre []sealedResult
	if len(opts) == 0 && len(seals) > 1 {
		pre = verifySealedParallel(dir, seals, progress)
	}
	head := audit.Head{}
	for i := range seals {
		sl := &seals[i]
		var sr sealedResult
		if pre != nil {
			sr = pre[i]
		} else {
			sr = verifySealed(dir, sl, prevSeal(seals, i), head, withProgress(opts))
		}
		if sr.archived {
			res.Archived = append(res.Archived, ArchivedSegment{Name: SegmentName(sl.First), First: sl.First, Last: sl.Last})
			if head, err = sl.head(); err != nil {
				return res, err
			}
			res.Records, res.LastHash, res.Head = head.Sequence, sl.LastHash, head
			continue
		}
		r := sr.r
		res.Segments++
		done += r.Bytes
		if r.Records > res.Records {
			res.Records, res.LastHash, res.Head = r.Records, r.LastHash, r.Head
		}
		if sr.err != nil {
			return res, sr.err
		}
		head = r.Head
	}
	first := head.Sequence + 1
	f, err := os.Open(filepath.Join(dir, SegmentName(first)))
	if errors.Is(err, fs.ErrNotExist) {
		// Stopped between a seal and the next segment, or lost.
		if len(seals) == 0 {
			if _, statErr := os.Stat(filepath.Join(dir, HeadFile)); statErr != nil {
				return res, fmt.Errorf("verify audit log: %s holds no audit log (no %s, no segment, no head file)", dir, SealsFile)
			}
		}
		return res, checkHeadFile(dir, &res)
	}
	if err != nil {
		return res, fmt.Errorf("verify audit log: %w", err)
	}
	defer f.Close()
	r, err := audit.Verify(&untilZero{r: f}, withProgress(append(opts, audit.WithStart(head)))...)
	res.Segments++
	if r.Records > res.Records || err == nil {
		res.Records, res.LastHash, res.Head = r.Records, r.LastHash, r.Head
	}
	res.Bytes = done + r.Bytes
	res.TrailingBytes = r.TrailingBytes
	if err != nil {
		return res, segmentError(err, first)
	}
	if progress != nil {
		progress(res.Bytes + res.TrailingBytes)
	}
	return res, checkHeadFile(dir, &res)
}

// checkHeadFile checks the log against its head file, which names a
// durable record: a log that ends before it, or holds another record
// there, lost records at its end (the chain alone cannot show that).
func checkHeadFile(dir string, res *DirResult) error {
	want, ok, err := fsutil.ReadHead(filepath.Join(dir, HeadFile))
	switch {
	case err != nil:
		return &audit.ChainError{Sequence: res.Records + 1, Reason: err.Error()}
	case !ok || want.Sequence == 0:
		return nil
	case want.Sequence > res.Records:
		return &audit.ChainError{Sequence: res.Records + 1, Reason: fmt.Sprintf(
			"the log ends at record %d, but its head file names record %d (hash %s): records were lost or cut off its end",
			res.Records, want.Sequence, audit.FormatHash(want.Hash))}
	}
	r, err := OpenReader(dir)
	if err != nil {
		return err
	}
	defer r.Close()
	line, err := r.Record(want.Sequence)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // in an archived segment: its seal vouched for the chain
	}
	if err != nil {
		return err
	}
	if _, sum, err := audit.ParseRecord(line); err != nil || sum != want.Hash {
		return &audit.ChainError{Sequence: want.Sequence, Reason: fmt.Sprintf(
			"record %d is not the one the head file names (hash %s): the log was replaced", want.Sequence, audit.FormatHash(want.Hash))}
	}
	return nil
}

// sealedResult is the check of one sealed segment.
type sealedResult struct {
	r        audit.VerifyResult
	err      error
	archived bool // not in the directory
}

// prevSeal is the seal before seals[i], nil for the first.
func prevSeal(seals []seal, i int) *seal {
	if i == 0 {
		return nil
	}
	return &seals[i-1]
}

// verifySealed checks the sealed segment of sl, whose first record
// extends start, against its seal: its records, and what the seal says
// about the log after them, recomputed from the seal before (prev, nil
// for the first segment) and the records: the tree's edge and the
// executions left open (which the next start would close as interrupted,
// so that a forged entry would have a made-up execution closed and
// signed). By induction over the seals, every seal after a segment in the
// directory is checked from what its records say.
func verifySealed(dir string, sl, prev *seal, start audit.Head, opts []audit.VerifyOption) sealedResult {
	f, err := os.Open(filepath.Join(dir, SegmentName(sl.First)))
	if errors.Is(err, fs.ErrNotExist) {
		return sealedResult{archived: true}
	}
	if err != nil {
		return sealedResult{err: fmt.Errorf("verify audit log: %w", err)}
	}
	defer f.Close()
	st, err := newSealState(prev)
	if err != nil {
		return sealedResult{err: err}
	}
	r, err := audit.Verify(io.NewSectionReader(f, 0, sl.Bytes+1), append(opts, audit.WithStart(start), st.lineOption(), st.recordOption())...)
	if err == nil {
		err = st.err
	}
	switch {
	case err != nil:
		err = segmentError(err, sl.First)
	case r.Bytes+r.TrailingBytes != sl.Bytes:
		err = &audit.ChainError{Sequence: r.Records + 1, Offset: r.Bytes,
			Reason: fmt.Sprintf("segment %s is not the %d bytes its seal states", SegmentName(sl.First), sl.Bytes)}
	case r.Records != sl.Last || r.LastHash != sl.LastHash:
		err = &audit.ChainError{Sequence: min(r.Records+1, sl.Last), Offset: r.Bytes,
			Reason: fmt.Sprintf("segment %s ends at record %d with hash %s; its seal says record %d with hash %s",
				SegmentName(sl.First), r.Records, r.LastHash, sl.Last, sl.LastHash)}
	default:
		if reason := st.differs(sl); reason != "" {
			err = &audit.ChainError{Sequence: sl.Last, Offset: r.Bytes,
				Reason: fmt.Sprintf("the seal of segment %s in %s %s", SegmentName(sl.First), SealsFile, reason)}
		}
	}
	return sealedResult{r: r, err: err}
}

// sealState recomputes what a seal says from the seal before it and the
// segment's records.
type sealState struct {
	tree *audit.TreeBuilder
	open map[string]*openLine
	err  error
}

func newSealState(prev *seal) (*sealState, error) {
	st := &sealState{open: map[string]*openLine{}}
	var size uint64
	var edge []tlog.Hash
	if prev != nil {
		h, err := prev.head()
		if err != nil {
			return nil, err
		}
		size, edge = h.Sequence, h.Tree
		for _, o := range prev.Open {
			st.open[o.ExecutionID] = &o
		}
	}
	b, err := audit.NewTreeBuilder(size, edge)
	if err != nil {
		return nil, fmt.Errorf("the seal before: %w", err)
	}
	st.tree = b
	return st, nil
}

func (st *sealState) lineOption() audit.VerifyOption {
	return audit.WithLineFunc(func(_ uint64, line []byte) {
		if st.err == nil {
			_, st.err = st.tree.Add(line)
		}
	})
}

// recordOption follows the executions as the store does (Store.track).
func (st *sealState) recordOption() audit.VerifyOption {
	return audit.WithRecordFunc(func(ev *audit.Event) {
		if ev.Type.Terminal() {
			delete(st.open, ev.ExecutionID)
			return
		}
		if o, ok := st.open[ev.ExecutionID]; ok {
			o.LastType = ev.Type.String()
			return
		}
		st.open[ev.ExecutionID] = &openLine{ExecutionID: ev.ExecutionID, PlanID: ev.PlanID, UserID: ev.UserID,
			LastType: ev.Type.String(), Sequence: ev.Sequence}
	})
}

// differs says how sl differs from what its records say, or "".
func (st *sealState) differs(sl *seal) string {
	edge := st.tree.Edge()
	same := len(edge) == len(sl.Tree)
	for i := 0; same && i < len(edge); i++ {
		same = hex.EncodeToString(edge[i][:]) == sl.Tree[i]
	}
	if !same {
		return fmt.Sprintf("has a tree edge after record %d that its records do not make", sl.Last)
	}
	var want []openLine
	for _, o := range st.open {
		want = append(want, *o)
	}
	slices.SortFunc(want, func(a, b openLine) int { return cmp.Compare(a.Sequence, b.Sequence) })
	if !slices.Equal(want, sl.Open) {
		return fmt.Sprintf("lists the executions open after record %d as %s; its records leave %s open",
			sl.Last, describeOpen(sl.Open), describeOpen(want))
	}
	return ""
}

// describeOpen names open executions by id and first sequence.
func describeOpen(open []openLine) string {
	if len(open) == 0 {
		return "none"
	}
	parts := make([]string, len(open))
	for i, o := range open {
		parts[i] = fmt.Sprintf("%s (record %d, %s)", o.ExecutionID, o.Sequence, o.LastType)
	}
	return strings.Join(parts, ", ")
}

// verifySealedParallel checks every sealed segment, as many at a time as
// there are CPUs (verifying is CPU-bound: JSON decoding and SHA-256).
func verifySealedParallel(dir string, seals []seal, progress func(int64)) []sealedResult {
	out := make([]sealedResult, len(seals))
	var mu sync.Mutex
	var total int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(seals)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(seals); i = int(next.Add(1) - 1) {
				sl := &seals[i]
				var opts []audit.VerifyOption
				if progress != nil {
					var seen int64
					opts = append(opts, audit.WithProgress(func(n int64) {
						mu.Lock()
						total += n - seen
						seen = n
						progress(total)
						mu.Unlock()
					}))
				}
				prev, err := fsutil.ParseHash(sl.PreviousHash)
				if err != nil {
					out[i] = sealedResult{err: err}
					continue
				}
				out[i] = verifySealed(dir, sl, prevSeal(seals, i), audit.Head{Sequence: sl.First - 1, Hash: prev}, opts)
			}
		})
	}
	wg.Wait()
	return out
}

// segmentError names the segment in a chain error, whose offset is the
// segment's.
func segmentError(err error, first uint64) error {
	var ce *audit.ChainError
	if errors.As(err, &ce) {
		ce.Reason = fmt.Sprintf("%s (in segment %s)", ce.Reason, SegmentName(first))
		return ce
	}
	return fmt.Errorf("verify segment %s: %w", SegmentName(first), err)
}

// SegmentResult describes one verified segment file.
type SegmentResult struct {
	audit.VerifyResult
	// First is the sequence of its first record, PreviousHash what that
	// record extends.
	First        uint64
	PreviousHash string
	// Sealed says whether the seal file beside it lists it; its records
	// were then checked against the seal as well.
	Sealed bool
}

// VerifySegment verifies one segment file on its own (an archived one,
// say): its records' hashes, their sequences from the one its name states,
// and their chain from its first record's previous_hash. When the seal
// file beside it lists it, the segment must also match its seal: length,
// last record and the hashes at both ends.
func VerifySegment(path string, opts ...audit.VerifyOption) (SegmentResult, error) {
	first, ok := ParseSegmentName(filepath.Base(path))
	if !ok {
		return SegmentResult{}, fmt.Errorf("verify segment: %s is not named as a segment (%s)", path, SegmentName(1))
	}
	f, err := os.Open(path)
	if err != nil {
		return SegmentResult{}, fmt.Errorf("verify segment: %w", err)
	}
	defer f.Close()
	res := SegmentResult{First: first}
	// The first record says what it extends (its own hash covers that):
	// read loosely here, so that a damaged first record is reported by
	// Verify as the chain error it is.
	line, _, _ := audit.NewLineReader(&untilZero{r: f}).Next()
	if len(line) == 0 {
		return res, nil // empty: a new active segment
	}
	var claims struct {
		PreviousHash string `json:"previous_hash"`
	}
	_ = json.Unmarshal(bytes.TrimSuffix(line, []byte("\n")), &claims)
	res.PreviousHash = claims.PreviousHash
	prev, _ := fsutil.ParseHash(claims.PreviousHash)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return res, err
	}
	r, err := audit.Verify(&untilZero{r: f}, append(opts, audit.WithStart(audit.Head{Sequence: first - 1, Hash: prev}))...)
	res.VerifyResult = r
	if err != nil {
		return res, err
	}
	seals, _, serr := ReadSeals(filepath.Join(filepath.Dir(path), SealsFile))
	if errors.Is(serr, fs.ErrNotExist) {
		return res, nil // no seal file beside it: the segment alone
	}
	if serr != nil {
		return res, fmt.Errorf("the seal file beside the segment: %w", serr)
	}
	for _, sl := range seals {
		if sl.First != first {
			continue
		}
		res.Sealed = true
		if r.Bytes+r.TrailingBytes != sl.Bytes || r.Records != sl.Last || r.LastHash != sl.LastHash || res.PreviousHash != sl.PreviousHash {
			return res, &audit.ChainError{Sequence: first, Reason: fmt.Sprintf(
				"segment does not match its seal in %s (records %d to %d, %d bytes, last hash %s)",
				SealsFile, sl.First, sl.Last, sl.Bytes, sl.LastHash)}
		}
	}
	return res, nil
}

// Reader reads the records and tree hashes of the log in a directory
// without opening the store (no lock: a running stage4 may hold it): for
// tools that prove a record offline. Whatever it returns is to be checked
// against a signed checkpoint, never trusted.
type Reader struct {
	dir   string
	seals []seal
	tree  *os.File
}

// OpenReader opens the log in dir for reading.
func OpenReader(dir string) (*Reader, error) {
	seals, _, err := ReadSeals(filepath.Join(dir, SealsFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	tree, err := os.Open(filepath.Join(dir, TreeFile))
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	return &Reader{dir: dir, seals: seals, tree: tree}, nil
}

// Record returns the bytes of the record of sequence seq (without its
// newline), reading its segment from the start.
func (r *Reader) Record(seq uint64) ([]byte, error) {
	first := uint64(1)
	if n := len(r.seals); n > 0 {
		first = r.seals[n-1].Last + 1
	}
	for _, sl := range r.seals {
		if sl.First <= seq && seq <= sl.Last {
			first = sl.First
			break
		}
	}
	f, err := os.Open(filepath.Join(r.dir, SegmentName(first)))
	if errors.Is(err, fs.ErrNotExist) && len(r.seals) > 0 && first <= r.seals[len(r.seals)-1].Last {
		return nil, fmt.Errorf("record %d is in segment %s, which is not in %s (archived?): %w", seq, SegmentName(first), r.dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	defer f.Close()
	return fsutil.FindRecord(&untilZero{r: f}, first, seq)
}

// ReadHashes reads stored hashes from the tree file; it is a
// tlog.HashReader.
func (r *Reader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	return fsutil.ReadHashesAt(r.tree, indexes)
}

// Close closes the tree file.
func (r *Reader) Close() error { return r.tree.Close() }
