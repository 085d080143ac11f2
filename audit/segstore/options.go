package segstore

// DefaultSegmentBytes is the segment size when WithSegmentBytes is not
// given: large enough that a year of segments stays a few tens of
// thousands of files, small enough that Open verifies one in well under a
// second.
const DefaultSegmentBytes = 64 << 20

// MinSegmentBytes is the smallest segment size Open accepts: a page.
// Small segments suit tests; a production log wants megabytes (stage4
// serve refuses less than 1 MiB).
const MinSegmentBytes = 4 << 10

// MaxSegmentBytes is the largest segment size Open accepts: records are
// found by their byte offset in their segment, kept in 32 bits by the
// index, and a batch larger than a segment may take it past its size.
const MaxSegmentBytes = 1 << 31

// Option configures Open.
type Option func(*config)

type config struct {
	segmentBytes int64
	preallocate  bool
	newLog       bool
	wrapFile     func(File) File
}

func defaultConfig() config {
	return config{segmentBytes: DefaultSegmentBytes, preallocate: true}
}

// WithSegmentBytes sets the size of a segment (MinSegmentBytes to
// MaxSegmentBytes). A batch is never split: a segment ends before the
// batch that would take it past the size (past 15/16 of it when
// preallocated: the rest is the reserve for terminal events on a full
// disk), and a single batch larger than it gets a segment of its own.
// Changing it for an existing log applies to the segments that follow.
func WithSegmentBytes(n int64) Option {
	return func(c *config) { c.segmentBytes = n }
}

// WithPreallocate sets whether segments are preallocated (default true):
// written full of zeros before they are used, the next one in the
// background, so that appending changes neither the file's size nor its
// block allocation and a sync writes the data alone. It costs a segment's
// size of disk ahead of the records.
func WithPreallocate(on bool) Option {
	return func(c *config) { c.preallocate = on }
}

// WithNewLog makes Open accept a log that does not hold the record its
// head file names (ErrHeadMismatch): the log is taken as it is now, and
// the head file is set aside as head.<unix time>.old for the operator to
// read, reported by Recovery. It changes nothing when the log matches its
// head file. It is for the operator to give once, after deciding that the
// records are gone: left on, it would hide the next loss too.
func WithNewLog() Option {
	return func(c *config) { c.newLog = true }
}

// WithFileWrapper routes the store's access to its segment files through
// wrap(f). It exists for fault injection and benchmarks; a wrapper whose
// Sync does not reach the disk voids the log's durability.
func WithFileWrapper(wrap func(File) File) Option {
	return func(c *config) { c.wrapFile = wrap }
}
