// Package segindex is the secondary index of a segmented audit log: for a
// field value (an execution, plan or user ID, or an event type) it finds the
// sequence numbers and segment offsets of the records that have it, at a cost
// that grows with the logarithm of the log rather than with the log.
//
// The index is a set of runs next to the segments plus the in-memory index of
// the segment being written (Mem). A run is an immutable file of entries
// sorted by (Key, Seq) that covers the records First..Last, one or more whole
// segments. The store writes a run when it seals a segment (WriteRun), merges
// runs as PlanMerge says (MergeRuns), and at start-up picks the live runs and
// the leftovers of a crash (ListRuns) and rebuilds the runs of segments none
// covers. Keys are 64-bit hashes, so a lookup may return a record that does
// not have the value: the store reads the record and checks, as it must
// anyway to return it.
//
// A run file is, big endian:
//
//	header   40 bytes  "S4IDX02\n", First uint64, Last uint64, Count uint64, Stride uint64
//	entries  Count × 20 bytes  Key uint64, Seq uint64, Offset uint32
//	fence    ⌈Count/Stride⌉ × 16 bytes  Key uint64, Seq uint64 of entries 0, Stride, 2·Stride, …
//	trailer  32 bytes  SHA-256 of the header, the entries and the fence
//
// and is named fmt.Sprintf("%020d-%020d.idx", First, Last), so that the
// directory listing alone says what each run covers.
//
// The fence lets a lookup start bisecting from one stride rather than the
// whole run. The writers see every entry in order, so they collect it as
// they go; it is stored apart from the entries so that opening a run reads
// it at once rather than with a read per post scattered across the file,
// which on a cold page cache is a disk access each. Opening a run checks the
// header against the name and the file size, and that the posts are in
// order; Verify checks the rest, and Lookup checks the posts it relies on.
// The magic names the format version: runs of another version are refused
// as corrupt, and the store rebuilds them.
package segindex
