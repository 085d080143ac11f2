package filestore

// Option configures Open.
type Option func(*config)

type config struct {
	wrapFile func(File) File
	newLog   bool
}

// WithFileWrapper routes all of the store's file access through wrap(f),
// where f is the opened file. It exists for fault injection (a File whose
// Write or Sync fails) and for benchmarks; production code has no reason
// to use it, and a wrapper whose Sync does not reach the disk voids the
// log's durability.
func WithFileWrapper(wrap func(File) File) Option {
	return func(c *config) { c.wrapFile = wrap }
}

// WithNewLog makes Open accept a log that does not hold the record its
// head file names (ErrHeadMismatch): the log is taken as it is now (a
// missing one is created and starts at sequence 1; a shorter one goes on
// from its last record), and the head file is set aside as
// <log>.head.<unix time>.old for the operator to read, reported by
// Recovery. It changes nothing when the log matches its head file. It is
// for the operator to give once, after deciding that the records are
// gone: left on, it would hide the next loss too.
func WithNewLog() Option {
	return func(c *config) { c.newLog = true }
}
