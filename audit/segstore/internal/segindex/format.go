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
	// magic names the format version: OpenRun refuses runs of any other
	// version, and the store rebuilds them from the segments.
	magic      = "S4IDX02\n"
	headerSize = 40
	entrySize  = 20
	postSize   = 16
	sumSize    = 32

	// fenceStride is how many entries apart the fence posts that WriteRun
	// and MergeRuns write are: 16 bytes per 1024 entries (160 KB for 10M
	// entries, read by OpenRun at once) turn a lookup's ~24 disk bisection
	// reads into ~3.
	fenceStride = 1024

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

// fenceLen is the number of fence posts of a run of count entries: one for
// every stride-th entry, the first included.
func fenceLen(count, stride uint64) uint64 {
	n := count / stride
	if count%stride != 0 {
		n++
	}
	return n
}

// fenceOffset is where the fence of a run of count entries starts.
func fenceOffset(count uint64) int64 { return entryOffset(count) }

// fileSize is the size of a run file holding count entries, with a fence
// post every stride entries.
func fileSize(count, stride uint64) int64 {
	return fenceOffset(count) + postSize*int64(fenceLen(count, stride)) + sumSize
}

func entryOffset(i uint64) int64 { return headerSize + entrySize*int64(i) }

func putHeader(b []byte, first, last, count, stride uint64) {
	copy(b, magic)
	binary.BigEndian.PutUint64(b[8:], first)
	binary.BigEndian.PutUint64(b[16:], last)
	binary.BigEndian.PutUint64(b[24:], count)
	binary.BigEndian.PutUint64(b[32:], stride)
}

// checkHeader decodes the header of the run file name of size bytes and
// checks it against the name and the size.
func checkHeader(b []byte, name string, size int64) (first, last, count, stride uint64, err error) {
	if string(b[:8]) != magic {
		return 0, 0, 0, 0, fmt.Errorf("magic %q, want %q: %w", b[:8], magic, ErrCorrupt)
	}
	first = binary.BigEndian.Uint64(b[8:])
	last = binary.BigEndian.Uint64(b[16:])
	count = binary.BigEndian.Uint64(b[24:])
	stride = binary.BigEndian.Uint64(b[32:])
	if nf, nl, ok := parseRunName(name); !ok || nf != first || nl != last {
		return 0, 0, 0, 0, fmt.Errorf("header covers %d..%d, name is %s: %w", first, last, name, ErrCorrupt)
	}
	if stride == 0 {
		return 0, 0, 0, 0, fmt.Errorf("fence stride 0: %w", ErrCorrupt)
	}
	// The bound keeps fileSize from overflowing on a damaged count (with
	// stride 1 the fence adds a post per entry).
	if count > (1<<62)/(entrySize+postSize) || fileSize(count, stride) != size {
		return 0, 0, 0, 0, fmt.Errorf("%d entries need %d bytes, file has %d: %w", count, fileSize(count, stride), size, ErrCorrupt)
	}
	return first, last, count, stride, nil
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

// fencePost is the (Key, Seq) of a run's entry that the run's fence samples.
type fencePost struct{ key, seq uint64 }

// less orders fence posts as the entries they sample.
func (p fencePost) less(q fencePost) bool {
	return p.key < q.key || p.key == q.key && p.seq < q.seq
}

func putPost(b []byte, p fencePost) {
	binary.BigEndian.PutUint64(b, p.key)
	binary.BigEndian.PutUint64(b[8:], p.seq)
}

func getPost(b []byte) fencePost {
	return fencePost{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
}
