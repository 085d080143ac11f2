package segstore

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/internal/fsutil"
	"github.com/stage4/stage4/internal/atomicfile"
)

// seal describes a sealed segment: one line of the seal file. It lets
// Open start from the end of the sealed segments without reading them,
// and lets verify check a segment on its own, or see where an archived
// one was.
type seal struct {
	// First and Last are the sequences of the segment's first and last
	// records; Bytes is the segment file's length.
	First uint64 `json:"first"`
	Last  uint64 `json:"last"`
	Bytes int64  `json:"bytes"`
	// PreviousHash is the previous_hash of the first record, LastHash
	// the hash of the last.
	PreviousHash string `json:"previous_hash"`
	LastHash     string `json:"last_hash"`
	// Tree is the Merkle tree's edge after Last (audit.Head.Tree), in hex.
	Tree []string `json:"tree"`
	// Open are the executions without a terminal event after Last.
	Open []openLine `json:"open,omitempty"`
}

// openLine is an open execution in a seal.
type openLine struct {
	ExecutionID string `json:"execution_id"`
	PlanID      string `json:"plan_id,omitempty"`
	UserID      string `json:"user_id,omitempty"`
	LastType    string `json:"last_type"`
	Sequence    uint64 `json:"sequence"`
}

func (o *openLine) execution() *audit.OpenExecution {
	return &audit.OpenExecution{
		ExecutionID: o.ExecutionID, PlanID: o.PlanID, UserID: o.UserID, Sequence: o.Sequence,
		LastType: lastType(o.LastType),
	}
}

// lastType is the type a seal's open execution names; a seal only ever
// names the non-terminal types, and anything else is read as
// EXECUTION_STARTED, the one that says the plan may have run.
func lastType(name string) audit.EventType {
	if t, ok := audit.ParseEventType(name); ok && t == audit.PlanReceived {
		return t
	}
	return audit.ExecutionStarted
}

// newSeal describes the active segment a, ending at head, with the
// executions open.
func newSeal(a *segment, head audit.Head, open map[string]*audit.OpenExecution) seal {
	sl := seal{
		First: a.first, Last: head.Sequence, Bytes: a.written,
		PreviousHash: audit.FormatHash(a.prevHash), LastHash: audit.FormatHash(head.Hash),
		Tree: make([]string, len(head.Tree)),
	}
	for i, h := range head.Tree {
		sl.Tree[i] = hex.EncodeToString(h[:])
	}
	for _, e := range open {
		sl.Open = append(sl.Open, openLine{ExecutionID: e.ExecutionID, PlanID: e.PlanID, UserID: e.UserID,
			LastType: e.LastType.String(), Sequence: e.Sequence})
	}
	slices.SortFunc(sl.Open, func(a, b openLine) int { return cmp.Compare(a.Sequence, b.Sequence) })
	return sl
}

// head returns the chain's head after the segment.
func (sl *seal) head() (audit.Head, error) {
	sum, err := fsutil.ParseHash(sl.LastHash)
	if err != nil {
		return audit.Head{}, fmt.Errorf("seal of segment %s: %w", SegmentName(sl.First), err)
	}
	h := audit.Head{Sequence: sl.Last, Hash: sum}
	for _, x := range sl.Tree {
		var t tlog.Hash
		if b, err := hex.DecodeString(x); err != nil || len(b) != len(t) {
			return audit.Head{}, fmt.Errorf("seal of segment %s: bad tree hash %q", SegmentName(sl.First), x)
		} else {
			copy(t[:], b)
		}
		h.Tree = append(h.Tree, t)
	}
	return h, nil
}

// ReadSeals reads the seal file at path and checks that the seals follow
// each other (each segment starts after the one before and extends its
// last hash). A last line without its newline, a seal being written when
// the process stopped, is left out and its length returned as torn.
func ReadSeals(path string) (seals []seal, torn int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	return readSeals(f)
}

func readSeals(r io.Reader) (seals []seal, torn int64, err error) {
	br := bufio.NewReader(r)
	prev := seal{LastHash: audit.GenesisHash}
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			return seals, int64(len(line)), nil
		}
		if err != nil {
			return nil, 0, err
		}
		var sl seal
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&sl); err != nil {
			return nil, 0, fmt.Errorf("%s line %d is unreadable: %w", SealsFile, n, err)
		}
		if _, err := sl.head(); err != nil {
			return nil, 0, fmt.Errorf("%s line %d: %w", SealsFile, n, err)
		}
		switch {
		case sl.First != prev.Last+1 || sl.Last < sl.First:
			return nil, 0, &audit.ChainError{Sequence: prev.Last + 1,
				Reason: fmt.Sprintf("%s line %d seals records %d to %d after records up to %d", SealsFile, n, sl.First, sl.Last, prev.Last)}
		case sl.PreviousHash != prev.LastHash:
			return nil, 0, &audit.ChainError{Sequence: sl.First,
				Reason: fmt.Sprintf("%s line %d: segment %s does not extend the segment before it", SealsFile, n, SegmentName(sl.First))}
		}
		seals = append(seals, sl)
		prev = sl
	}
}

// openSeals reads the seal file, cuts a torn last line and keeps the file
// open for the next seals.
func (s *Store) openSeals() ([]seal, error) {
	path := s.path(SealsFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	s.sealsFile = f
	seals, torn, err := readSeals(f)
	if err != nil {
		return nil, err
	}
	if torn > 0 {
		fi, err := f.Stat()
		if err == nil {
			err = f.Truncate(fi.Size() - torn)
		}
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			return nil, fmt.Errorf("cut the incomplete last line of %s: %w", path, err)
		}
	}
	if err := atomicfile.SyncDir(s.dir); err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return seals, s.sealsWatch.KnownFile(f, fi.Size())
}

// appendSeal appends sl to the seal file and syncs it. A write that
// fails (a full disk) is taken back by cutting the file to its old length,
// and is then an audit.ErrUnavailable; any other failure fails the store.
func (s *Store) appendSeal(sl seal) error {
	line, err := json.Marshal(sl)
	if err != nil {
		return s.fail(err)
	}
	// The seal file is what the store left it, or nothing is sealed.
	if err := s.sealsWatch.Check(); err != nil {
		return s.latchChange(err)
	}
	fi, err := s.sealsFile.Stat()
	if err != nil {
		return s.fail(fmt.Errorf("stat %s: %w", SealsFile, err))
	}
	if _, err := s.sealsFile.Write(append(line, '\n')); err != nil {
		if terr := s.sealsFile.Truncate(fi.Size()); terr != nil {
			return s.fail(fmt.Errorf("write %s: %w; and cut it back: %w", SealsFile, err, terr))
		}
		return fmt.Errorf("%w: write %s: %w", audit.ErrUnavailable, SealsFile, err)
	}
	s.sealsWatch.Grow(int64(len(line)) + 1)
	if err := s.sealsFile.Sync(); err != nil {
		return s.fail(fmt.Errorf("fsync %s: %w", SealsFile, err))
	}
	return nil
}

// segmentFiles lists the segment files in the directory by first
// sequence, and checks them against the seals: every file must be a
// sealed segment of the length its seal states, or the active segment
// (the one after the last seal). Sealed segments may be missing
// (archived).
func (s *Store) segmentFiles(seals []seal) (map[uint64]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	activeFirst := uint64(1)
	if len(seals) > 0 {
		activeFirst = seals[len(seals)-1].Last + 1
	}
	names := map[uint64]string{}
	for _, e := range entries {
		first, ok := ParseSegmentName(e.Name())
		if !ok {
			continue
		}
		names[first] = e.Name()
		if first == activeFirst {
			continue
		}
		i, found := slices.BinarySearchFunc(seals, first, func(sl seal, seq uint64) int { return cmp.Compare(sl.First, seq) })
		if !found {
			return nil, &audit.ChainError{Sequence: first,
				Reason: fmt.Sprintf("segment file %s is neither sealed in %s nor the active segment (%s)", e.Name(), SealsFile, SegmentName(activeFirst))}
		}
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		if fi.Size() != seals[i].Bytes {
			return nil, &audit.ChainError{Sequence: first,
				Reason: fmt.Sprintf("segment %s is %d bytes long, its seal says %d: changed after it was sealed", e.Name(), fi.Size(), seals[i].Bytes)}
		}
	}
	return names, nil
}
