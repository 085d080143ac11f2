package segstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// The store of local paths: an audit log location that is not a URL is a
// log directory (created when missing), or, for the offline tools only,
// one segment file of one, or a single-file log from before logs were
// directories.
func init() { audit.Register(driver{}) }

type driver struct{}

// pathKind is what a local path names.
type pathKind int

const (
	kindDir     pathKind = iota // a log directory, or nothing yet
	kindSegment                 // one segment file of a log directory
	kindFile                    // any other file: a single-file log
)

func kindOf(path string) pathKind {
	fi, err := os.Stat(path)
	if err != nil || fi.IsDir() {
		return kindDir
	}
	if _, ok := ParseSegmentName(filepath.Base(path)); ok {
		return kindSegment
	}
	return kindFile
}

// legacyHeadSuffix ends the head file that a single-file log kept beside
// itself (<path>.head).
const legacyHeadSuffix = ".head"

// Open opens (or creates) the log directory at loc and logs what its
// start-up found and did, and how long it took: start-up reads the active
// segment only, so the time says whether that still holds. It never
// appends to anything but a log directory: a segment file is sealed and
// must not change, and a single-file log is only read (audit verify).
func (driver) Open(_ context.Context, loc audit.Location, cfg audit.OpenConfig) (audit.Store, error) {
	path := loc.Path
	switch kindOf(path) {
	case kindSegment:
		return nil, fmt.Errorf("%w: %s is one segment file of a log directory; give the directory (%s)",
			audit.ErrLocation, path, filepath.Dir(path))
	case kindFile:
		return nil, fmt.Errorf("%w: %s is a single-file audit log, from before logs were directories: "+
			"stage4 serve keeps its log in a directory; check this one with stage4 audit verify %s and begin a directory beside it",
			audit.ErrLocation, path, path)
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if _, herr := os.Stat(path + legacyHeadSuffix); herr == nil {
			return nil, fmt.Errorf("%w: %s is missing, but %s%s, the head file of a single-file log, is there: "+
				"that log was removed or renamed; restore it, or choose another --audit-log", ErrHeadMismatch, path, path, legacyHeadSuffix)
		}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	segmentBytes := cfg.SegmentBytes
	if segmentBytes == 0 {
		segmentBytes = DefaultSegmentBytes
	}
	opts := []Option{WithSegmentBytes(segmentBytes)}
	if cfg.NewLog {
		opts = append(opts, WithNewLog())
	}
	start := time.Now()
	s, err := Open(path, opts...)
	took := time.Since(start)
	if errors.Is(err, ErrHeadMismatch) {
		return nil, fmt.Errorf("%w; the log directory or a segment of it was removed, renamed, replaced or truncated: restore it, "+
			"or start once with --audit-new-log to begin a new log (the head file is then kept aside)", err)
	}
	if errors.Is(err, ErrMissingFile) {
		return nil, fmt.Errorf("%w; restore the file from a backup, "+
			"or start once with --audit-new-log to go on without it (the log is taken as it is)", err)
	}
	if err != nil {
		return nil, err // already says "open audit log"
	}
	rec := s.Recovery()
	if len(rec.MissingFiles) > 0 {
		logger.Warn("started the audit log (--audit-new-log) although files were missing",
			"audit_log", path, "missing", strings.Join(rec.MissingFiles, "; "), "records", rec.Records)
	}
	if rec.TruncatedBytes > 0 {
		logger.Warn("audit log repaired after an unclean stop: cut an incomplete last record off the active segment",
			"truncated_bytes", rec.TruncatedBytes)
	}
	if rec.TreeRebuilt != "" {
		logger.Warn("rebuilt the audit log's Merkle tree file from every segment",
			"audit_log", path, "reason", rec.TreeRebuilt, "records", rec.Records)
	}
	if rec.OldHeadFile != "" {
		logger.Warn("began a new audit log (--audit-new-log) although the log lost records; the old head file is kept aside",
			"audit_log", path, "old_head_file", rec.OldHeadFile, "mismatch", rec.HeadMismatch, "records", rec.Records)
	}
	if rec.ArchivedSegments > 0 {
		// Not an error: sealed segments may be moved away (docs/AUDIT_LOG.md).
		logger.Info("sealed audit log segments are archived (not in the directory): their records are not listed",
			"audit_log", path, "archived_segments", rec.ArchivedSegments)
	}
	if rec.IndexRebuilds > 0 {
		logger.Info("rebuilding the index of sealed audit log segments in the background; listings read those segments meanwhile",
			"audit_log", path, "segments", rec.IndexRebuilds)
	}
	logger.Info("audit log opened: a directory of segments",
		"audit_log", path,
		"records", rec.Records,
		"sealed_segments", rec.SealedSegments,
		"archived_segments", rec.ArchivedSegments,
		"verified_records", rec.VerifiedRecords,
		"tree_recomputed", rec.TreeRecomputed,
		"index_rebuilds", rec.IndexRebuilds,
		"segment_bytes", segmentBytes,
		// As the call log's grpc.time_ms: milliseconds with a fraction.
		"open_ms", float64(took.Microseconds())/1000)
	return s, nil
}

// OpenReader reads the log directory at loc; a segment file or a
// single-file log has no tree file to prove from.
func (driver) OpenReader(_ context.Context, loc audit.Location) (audit.LogReader, error) {
	switch kindOf(loc.Path) {
	case kindSegment:
		return nil, fmt.Errorf("%w: %s is one segment of a log directory: give the directory, whose tree file the proof is built from",
			audit.ErrLocation, loc.Path)
	case kindFile:
		return nil, fmt.Errorf("%w: %s is a single-file log from before logs were directories, which has no tree to prove from",
			audit.ErrLocation, loc.Path)
	}
	r, err := OpenReader(loc.Path)
	if err != nil {
		return nil, err
	}
	return ctxReader{r}, nil
}

// ctxReader is a Reader as an audit.LogReader: local reads do not wait on
// anything a context could end.
type ctxReader struct{ r *Reader }

func (c ctxReader) Record(_ context.Context, seq uint64) ([]byte, error) { return c.r.Record(seq) }
func (c ctxReader) ReadHashes(_ context.Context, idx []int64) ([]tlog.Hash, error) {
	return c.r.ReadHashes(idx)
}
func (c ctxReader) Close() error { return c.r.Close() }

// Verify checks a log directory (VerifyDir), one segment
// (VerifySegment) or a single-file log (audit.Verify on the file), and
// says what it could not check.
func (driver) Verify(_ context.Context, loc audit.Location, cfg audit.VerifyConfig) (audit.VerifyReport, error) {
	path := loc.Path
	withProgress := func(opts []audit.VerifyOption) []audit.VerifyOption {
		if cfg.Progress == nil {
			return opts
		}
		return append(opts, audit.WithProgress(cfg.Progress))
	}
	if _, err := os.Stat(path); err != nil {
		return audit.VerifyReport{}, fmt.Errorf("verify audit log: %w", err)
	}
	switch kindOf(path) {
	case kindSegment:
		if cfg.RequireFirst > 0 {
			return audit.VerifyReport{}, fmt.Errorf("%w: a checkpoint needs every record of the log from the first: give the log directory, not one segment", audit.ErrLocation)
		}
		return verifySegmentReport(path, withProgress(cfg.Options))
	case kindFile:
		return verifyFileReport(path, withProgress(cfg.Options))
	}
	if !isLogDir(path) {
		return audit.VerifyReport{}, fmt.Errorf("%w: %s is a directory but not an audit log directory: it holds neither %s nor segment files",
			audit.ErrLocation, path, SealsFile)
	}
	return verifyDirReport(path, cfg)
}

// isLogDir reports whether dir holds a seal file or a segment: a log
// directory, as opposed to a directory given by mistake, which would
// otherwise verify as an empty log.
func isLogDir(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, SealsFile)); err == nil {
		return true
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist) // let the verification report what is wrong
	}
	for _, e := range entries {
		if _, ok := ParseSegmentName(e.Name()); ok {
			return true
		}
	}
	return false
}

// verifyDirReport verifies a log directory and says how many segments it
// read and which records it could not, being in archived segments.
func verifyDirReport(dir string, cfg audit.VerifyConfig) (audit.VerifyReport, error) {
	res, err := VerifyDir(dir, cfg.Progress, cfg.Options...)
	out := audit.VerifyReport{Result: res.VerifyResult, Offsets: true}
	archived := describeArchived(res.Archived)
	if archived != "" {
		out.DamagedNotes = []string{archived}
	}
	if err != nil {
		return out, err
	}
	if cfg.Progress != nil {
		// The active segment's preallocated end is never read: finish
		// the progress at 100%.
		cfg.Progress(1 << 62)
	}
	if need := archivedBelow(res.Archived, cfg.RequireFirst); need != "" {
		out.Refusal = fmt.Sprintf("CHECKPOINT NOT CHECKED: it signs a tree of %d records, and %s, not in the directory; "+
			"the check rehashes every record from the first: put the archived segments back into %s and verify again\n"+
			"  the hash chain of the segments in the directory is intact, last hash %s\n",
			cfg.RequireFirst, need, dir, res.LastHash)
		return out, nil
	}
	out.Notes = []string{fmt.Sprintf("  %d %s", res.Segments, plural(res.Segments, "segment", "segments"))}
	if archived != "" {
		out.Notes = append(out.Notes, archived)
	}
	return out, nil
}

// describeArchived says which records are in archived segments, not
// checked here, or "" when none are.
func describeArchived(archived []ArchivedSegment) string {
	if len(archived) == 0 {
		return ""
	}
	return fmt.Sprintf("  records %s are in %d archived %s, not checked here: verify them with stage4 audit verify SEGMENT",
		recordRanges(archived), len(archived), plural(len(archived), "segment", "segments"))
}

// recordRanges writes the sequences of segments as ranges, joining
// segments that follow each other: "1 to 5000" or "1 to 10, 21 to 30".
func recordRanges(segs []ArchivedSegment) string {
	var parts []string
	for i := 0; i < len(segs); {
		first, last := segs[i].First, segs[i].Last
		for i++; i < len(segs) && segs[i].First == last+1; i++ {
			last = segs[i].Last
		}
		parts = append(parts, fmt.Sprintf("%d to %d", first, last))
	}
	return strings.Join(parts, ", ")
}

// archivedBelow says which of the first size records are in archived
// segments ("records 1 to 5000 are"), or "" when none are: a checkpoint of
// size records can be checked only if none is.
func archivedBelow(archived []ArchivedSegment, size uint64) string {
	var need []ArchivedSegment
	for _, a := range archived {
		if a.First <= size {
			need = append(need, a)
		}
	}
	if len(need) == 0 {
		return ""
	}
	return fmt.Sprintf("records %s are in %d archived %s", recordRanges(need), len(need), plural(len(need), "segment", "segments"))
}

// verifySegmentReport verifies one segment file and says whether it was
// checked against its seal.
func verifySegmentReport(path string, opts []audit.VerifyOption) (audit.VerifyReport, error) {
	res, err := VerifySegment(path, opts...)
	out := audit.VerifyReport{Result: res.VerifyResult, Offsets: true, FirstRecord: res.First}
	if err != nil {
		return out, err
	}
	name := filepath.Base(path)
	if res.Records < res.First {
		out.OKLine = fmt.Sprintf("OK segment %s: no records yet (a segment just begun)", name)
	} else {
		out.OKLine = fmt.Sprintf("OK segment %s: records %d to %d, previous hash %s, last hash %s",
			name, res.First, res.Records, res.PreviousHash, res.LastHash)
	}
	out.Notes = []string{"  " + sealStatus(path, res.Sealed)}
	return out, nil
}

// sealStatus says what the segment at path was checked against besides
// its own records. VerifySegment takes an unreadable seal file for none,
// so this tells the cases apart.
func sealStatus(path string, sealed bool) string {
	if sealed {
		return "matches its seal in " + SealsFile
	}
	seals := filepath.Join(filepath.Dir(path), SealsFile)
	_, _, err := ReadSeals(seals)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no seal file beside it: checked on its own"
	case err != nil:
		return fmt.Sprintf("the seal file beside it is unreadable (%v): checked on its own; verify the log directory", err)
	}
	return "not sealed in the " + SealsFile + " beside it (the active segment, or one of another log): checked on its own"
}

// verifyFileReport verifies a single-file log from before logs were
// directories: its chain from sequence 1.
func verifyFileReport(path string, opts []audit.VerifyOption) (audit.VerifyReport, error) {
	f, err := os.Open(path)
	if err != nil {
		return audit.VerifyReport{}, fmt.Errorf("verify audit log: %w", err)
	}
	defer f.Close()
	res, err := audit.Verify(f, opts...)
	out := audit.VerifyReport{Result: res, Offsets: true, Notes: []string{"  a single-file log, from before logs were directories"}}
	return out, err
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
