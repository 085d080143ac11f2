package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"

	"golang.org/x/mod/sumdb/tlog"
)

// A Driver opens the stores of one kind of audit log location: a URL
// scheme (postgres://) or local paths. Each store package registers its
// driver in an init function (Register), like database/sql drivers, and
// every command that takes an audit log location (serve, audit verify,
// audit prove, the load tool) resolves it through Lookup: adding a store
// is a package, a Register call, an import of the package by the binary,
// and the conformance suite (audit/storetest) passing.
type Driver interface {
	// Open opens the store at loc for a log to serve from: creating it
	// when it does not exist, repairing what a crash left behind, and
	// refusing damage. What it found and did goes to cfg.Logger.
	Open(ctx context.Context, loc Location, cfg OpenConfig) (Store, error)
	// OpenReader opens the log at loc for offline reading (audit prove)
	// without disturbing a process that serves it.
	OpenReader(ctx context.Context, loc Location) (LogReader, error)
	// Verify walks the log at loc and checks every record it holds
	// (audit verify), without disturbing a process that serves it.
	Verify(ctx context.Context, loc Location, cfg VerifyConfig) (VerifyReport, error)
}

// OpenConfig is what the operator sets for every store alike; a driver
// ignores what does not apply to its kind.
type OpenConfig struct {
	// NewLog lets a store whose log lost records since the last start
	// (a local log removed, truncated or replaced) be taken as it is,
	// instead of refusing to open: the operator's explicit decision.
	NewLog bool
	// ReplicaName names this process among the replicas that share a
	// store; the host name when empty.
	ReplicaName string
	// SegmentBytes is the size at which a store that keeps its records in
	// segment files begins the next one; 0 is the store's default.
	SegmentBytes int64
	// Logger receives what Open found and repaired; nil discards it.
	Logger *slog.Logger
}

// LogReader reads a log's records and stored tree hashes offline, for
// tools that prove a record against a checkpoint: nothing it returns is
// trusted, it is checked against a signed root.
type LogReader interface {
	// Record returns the bytes (without newline) of the record of seq.
	Record(ctx context.Context, seq uint64) ([]byte, error)
	// ReadHashes returns stored hashes of the tree (see Store.ReadHashes).
	ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error)
	io.Closer
}

// VerifyConfig configures Driver.Verify.
type VerifyConfig struct {
	// Options apply to the records in log order (WithLineFunc,
	// WithRecordFunc); WithProgress is given as Progress.
	Options []VerifyOption
	// Progress, when not nil, is called with the bytes read so far.
	Progress func(bytesRead int64)
	// RequireFirst, when positive, is a number of records from sequence 1
	// that the check needs to read (to rehash them for a checkpoint of
	// that size): a log that holds some of them elsewhere (archived
	// segments) is reported as VerifyReport.Refusal instead of OK.
	RequireFirst uint64
}

// VerifyReport is what Verify found, for a command line to print.
type VerifyReport struct {
	// Result describes the intact records; with a *ChainError as Verify's
	// error, the records before the damage.
	Result VerifyResult
	// Offsets says whether a ChainError's Offset means something (a
	// byte offset in a file).
	Offsets bool
	// FirstRecord is the sequence of the first record verified: 1, or a
	// segment's first.
	FirstRecord uint64
	// OKLine replaces "OK N records, last hash H" when set.
	OKLine string
	// Notes follow the OK line; DamagedNotes follow a DAMAGED report.
	Notes, DamagedNotes []string
	// Refusal, when set, is printed instead of OK and ends the command
	// with the "no" status: the chain is intact but the check asked for
	// could not be made.
	Refusal string
}

// Location is a parsed audit log location (--audit-log): a URL, whose
// scheme picks the driver, or a local path.
type Location struct {
	// Raw is the value as given. It may hold a password: log Redacted.
	Raw string
	// URL is set for a URL, with its scheme in lower case.
	URL *url.URL
	// Path is set for a local path.
	Path string
}

// IsURL reports whether the location is a URL.
func (l Location) IsURL() bool { return l.URL != nil }

// Redacted is the location with any password hidden, for logs and errors.
func (l Location) Redacted() string {
	switch {
	case l.URL == nil:
		return l.Path
	case l.URL.Opaque != "":
		// scheme:user:password@host has no authority to parse the user
		// information from, but may still be one mistyped.
		return redactQuery(redactUnparsable(l.Raw))
	}
	return redactQuery(l.URL.Redacted())
}

// RedactLocation is s with anything that may be a password in a location
// hidden, whether or not s is a valid one: for command lines and errors
// that quote what the user typed.
func RedactLocation(s string) string {
	if l, err := ParseLocation(s); err == nil {
		return l.Redacted()
	}
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return redactQuery(u.Redacted())
	}
	return redactQuery(redactUnparsable(s))
}

// queryPassword is a password given as a URL query parameter, which
// libpq and pgx accept (postgres://db/x?password=...), or in a
// keyword/value connection string.
var queryPassword = regexp.MustCompile(`(?i)(\bpassword=)[^&\s]*`)

func redactQuery(s string) string { return queryPassword.ReplaceAllString(s, "${1}xxxxx") }

// String is Redacted, so that a Location is never printed with its
// password by accident.
func (l Location) String() string { return l.Redacted() }

// schemePrefix is a URL scheme at the start of a location (RFC 3986:
// ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":").
var schemePrefix = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// likelyURL is a path that was meant to be a URL: a scheme-like word
// followed by "//" without the colon (postgresql//user:pw@host/db), or
// user information with a password before an "@".
var likelyURL = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*//|^[^/]*:[^/]*@`)

// ErrLocation marks a location that names no store this binary has: an
// unknown scheme, or a path that looks like a mistyped URL. Commands
// report it as a usage error.
var ErrLocation = errors.New("invalid audit log location")

// ParseLocation parses an audit log location. A value that begins with a
// URL scheme is a URL (the scheme is case-insensitive); anything else is
// a local path, and a directory whose name has a colon is written
// ./name:x. A path that looks like a mistyped URL is refused, so that a
// typo never becomes a private local log nobody else sees; errors quote
// the value with any password redacted.
func ParseLocation(s string) (Location, error) {
	if s == "" {
		return Location{}, fmt.Errorf("%w: empty", ErrLocation)
	}
	if schemePrefix.MatchString(s) {
		u, err := url.Parse(s)
		if err != nil {
			return Location{}, fmt.Errorf("%w: %s is not a valid URL", ErrLocation, redactQuery(redactUnparsable(s)))
		}
		u.Scheme = strings.ToLower(u.Scheme)
		return Location{Raw: s, URL: u}, nil
	}
	if likelyURL.MatchString(s) {
		return Location{}, fmt.Errorf("%w: %s looks like a URL with a mistake, not a directory: "+
			"a URL starts with its scheme and a colon (postgres://...); a directory whose name has a colon or @ is written ./name",
			ErrLocation, redactQuery(redactUnparsable(s)))
	}
	return Location{Raw: s, Path: s}, nil
}

// redactUnparsable hides what may be a password in a value that is not a
// valid URL with user information: everything between the last colon and
// the last "@" before the host.
func redactUnparsable(s string) string {
	at := strings.LastIndex(s, "@")
	if at < 0 {
		return s
	}
	colon := strings.LastIndex(s[:at], ":")
	if colon < 0 {
		return s
	}
	return s[:colon+1] + "xxxxx" + s[at:]
}

var (
	driversMu sync.RWMutex
	schemes   = map[string]Driver{}
	pathDrv   Driver
)

// Register makes a driver available for the URL schemes it names (lower
// case, without the colon), or, with no schemes, for local paths. It
// panics when a scheme or the path kind is registered twice: drivers
// register in init functions, where a clash is a programming error.
func Register(d Driver, schemeNames ...string) {
	driversMu.Lock()
	defer driversMu.Unlock()
	if len(schemeNames) == 0 {
		if pathDrv != nil {
			panic("audit: Register: a driver for local paths is registered twice")
		}
		pathDrv = d
		return
	}
	for _, s := range schemeNames {
		s = strings.ToLower(s)
		if _, dup := schemes[s]; dup {
			panic("audit: Register: scheme " + s + " is registered twice")
		}
		schemes[s] = d
	}
}

// Schemes returns the URL schemes of the registered drivers, sorted.
func Schemes() []string {
	driversMu.RLock()
	defer driversMu.RUnlock()
	out := make([]string, 0, len(schemes))
	for s := range schemes {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// Lookup returns the driver of loc: the one registered for its URL scheme
// or for local paths. It is the one place where a location picks a store.
func Lookup(loc Location) (Driver, error) {
	driversMu.RLock()
	defer driversMu.RUnlock()
	if loc.URL == nil {
		if pathDrv == nil {
			return nil, fmt.Errorf("%w: %s: no store for local paths is built in", ErrLocation, loc.Redacted())
		}
		return pathDrv, nil
	}
	if d, ok := schemes[loc.URL.Scheme]; ok {
		return d, nil
	}
	known := make([]string, 0, len(schemes))
	for s := range schemes {
		known = append(known, s+":")
	}
	slices.Sort(known)
	return nil, fmt.Errorf("%w: %s: unknown scheme %q (this stage4 knows %s, or a local directory path)",
		ErrLocation, loc.Redacted(), loc.URL.Scheme, strings.Join(known, ", "))
}

// Resolve parses s and looks up its driver.
func Resolve(s string) (Driver, Location, error) {
	loc, err := ParseLocation(s)
	if err != nil {
		return nil, Location{}, err
	}
	d, err := Lookup(loc)
	return d, loc, err
}

// Open resolves s and opens its store: what serve does with --audit-log.
func Open(ctx context.Context, s string, cfg OpenConfig) (Store, Location, error) {
	d, loc, err := Resolve(s)
	if err != nil {
		return nil, loc, err
	}
	st, err := d.Open(ctx, loc, cfg)
	return st, loc, err
}
