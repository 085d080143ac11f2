package segindex

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Entry says that the record with sequence number Seq, which starts at byte
// Offset of its segment, has a field value whose key is Key. A record has one
// entry per non-empty indexed field.
type Entry struct {
	Key    uint64
	Seq    uint64
	Offset uint32
}

// ErrCorrupt is wrapped by the errors of OpenRun, Verify and MergeRuns when
// a run file's content is wrong (as opposed to an I/O error): the store
// removes such a run and rebuilds its range from the segments. Lookup does
// not check content; a damaged run gives wrong answers until Verify finds it.
var ErrCorrupt = errors.New("corrupt index run")

const (
	magic      = "S4IDX01\n"
	headerSize = 32
	entrySize  = 20
	sumSize    = 32

	// runSuffix ends every run file name; tmpInfix follows it in the names
	// of files being written, so that ListRuns can tell them apart.
	runSuffix = ".idx"
	tmpInfix  = ".tmp-"
	nameLen   = 20 + 1 + 20 + len(runSuffix)
)

// compareEntries orders entries as runs store them: by Key, then Seq. Offset
// only breaks ties (two fields of one record whose keys collide), so that the
// order, and so the file, does not depend on the sort's instability.
func compareEntries(a, b Entry) int {
	if c := cmp.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Seq, b.Seq); c != 0 {
		return c
	}
	return cmp.Compare(a.Offset, b.Offset)
}

// runName is the file name of the run covering first..last.
func runName(first, last uint64) string {
	return fmt.Sprintf("%020d-%020d%s", first, last, runSuffix)
}

// parseRunName returns the range a run file name covers. Only names runName
// produces parse, so that a stray "1-2.idx" is not taken for a run.
func parseRunName(name string) (first, last uint64, ok bool) {
	if len(name) != nameLen || name[20] != '-' || !strings.HasSuffix(name, runSuffix) {
		return 0, 0, false
	}
	first, err1 := strconv.ParseUint(name[:20], 10, 64)
	last, err2 := strconv.ParseUint(name[21:41], 10, 64)
	if err1 != nil || err2 != nil || first == 0 || first > last || runName(first, last) != name {
		return 0, 0, false
	}
	return first, last, true
}

// fileSize is the size of a run file holding count entries.
func fileSize(count uint64) int64 {
	return headerSize + entrySize*int64(count) + sumSize
}

func putHeader(b []byte, first, last, count uint64) {
	copy(b, magic)
	binary.BigEndian.PutUint64(b[8:], first)
	binary.BigEndian.PutUint64(b[16:], last)
	binary.BigEndian.PutUint64(b[24:], count)
}

// checkHeader decodes the header of the run file name of size bytes and
// checks it against the name and the size.
func checkHeader(b []byte, name string, size int64) (first, last, count uint64, err error) {
	if string(b[:8]) != magic {
		return 0, 0, 0, fmt.Errorf("bad magic: %w", ErrCorrupt)
	}
	first = binary.BigEndian.Uint64(b[8:])
	last = binary.BigEndian.Uint64(b[16:])
	count = binary.BigEndian.Uint64(b[24:])
	if nf, nl, ok := parseRunName(name); !ok || nf != first || nl != last {
		return 0, 0, 0, fmt.Errorf("header covers %d..%d, name is %s: %w", first, last, name, ErrCorrupt)
	}
	// The bound keeps fileSize from overflowing on a damaged count.
	if count > (1<<62)/entrySize || fileSize(count) != size {
		return 0, 0, 0, fmt.Errorf("%d entries need %d bytes, file has %d: %w", count, fileSize(count), size, ErrCorrupt)
	}
	return first, last, count, nil
}

func putEntry(b []byte, e Entry) {
	binary.BigEndian.PutUint64(b, e.Key)
	binary.BigEndian.PutUint64(b[8:], e.Seq)
	binary.BigEndian.PutUint32(b[16:], e.Offset)
}

func getEntry(b []byte) Entry {
	return Entry{
		Key:    binary.BigEndian.Uint64(b),
		Seq:    binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint32(b[16:]),
	}
}
