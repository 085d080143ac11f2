package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/audit/segstore"
)

// logKind is what an audit verify or prove argument names.
type logKind int

const (
	logFile     logKind = iota // a single-file log from before segments
	logDir                     // a log directory of segments
	logSegment                 // one segment file of a log directory
	logDatabase                // a PostgreSQL URL
)

// logKindOf tells what path names. A file is a segment by its name alone
// (segstore.ParseSegmentName), so that an archived segment is verified as
// one wherever it was copied to.
func logKindOf(path string) logKind {
	switch {
	case pgstore.IsURL(path):
		return logDatabase
	case segstore.IsDir(path):
		return logDir
	}
	if _, ok := segstore.ParseSegmentName(filepath.Base(path)); ok {
		return logSegment
	}
	return logFile
}

// isLogDir reports whether dir holds a seal file or a segment: a log
// directory, as opposed to a directory given by mistake, which would
// otherwise verify as an empty log.
func isLogDir(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, segstore.SealsFile)); err == nil {
		return true
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return true // let the verification report what is wrong
	}
	for _, e := range entries {
		if _, ok := segstore.ParseSegmentName(e.Name()); ok {
			return true
		}
	}
	return false
}

// logSize is the number of bytes verifying path reads at most, for the
// progress line: a file's size, the sum of a directory's segments (the
// active one counted at its preallocated size), 0 for a database.
func logSize(path string, kind logKind) int64 {
	switch kind {
	case logDatabase:
		return 0
	case logDir:
		entries, err := os.ReadDir(path)
		if err != nil {
			return 0
		}
		var size int64
		for _, e := range entries {
			if _, ok := segstore.ParseSegmentName(e.Name()); !ok {
				continue
			}
			if fi, err := e.Info(); err == nil {
				size += fi.Size()
			}
		}
		return size
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// verifyDir verifies a log directory (segstore.VerifyDir) and says how
// many segments it read and which records it could not, being in
// archived segments.
func verifyDir(dir string, progress func(int64), check *checkpointCheck, opts []audit.VerifyOption) verifyOutcome {
	res, err := segstore.VerifyDir(dir, progress, opts...)
	out := verifyOutcome{res: res.VerifyResult, err: err, offsets: true}
	archived := describeArchived(res.Archived)
	if archived != "" {
		out.damagedNotes = []string{archived}
	}
	if err != nil {
		return out
	}
	if progress != nil {
		// The active segment's preallocated end is never read: finish
		// the line at 100%.
		progress(1 << 62)
	}
	if check != nil {
		if need := archivedBelow(res.Archived, check.cp.Size); need != "" {
			out.refusal = fmt.Sprintf("CHECKPOINT NOT CHECKED: it signs a tree of %d records, and %s, not in the directory; "+
				"the check rehashes every record from the first: put the archived segments back into %s and verify again\n"+
				"  the hash chain of the segments in the directory is intact, last hash %s\n",
				check.cp.Size, need, dir, res.LastHash)
			return out
		}
	}
	out.notes = []string{fmt.Sprintf("  %d %s", res.Segments, plural(res.Segments, "segment", "segments"))}
	if archived != "" {
		out.notes = append(out.notes, archived)
	}
	return out
}

// describeArchived says which records are in archived segments, not
// checked here, or "" when none are.
func describeArchived(archived []segstore.ArchivedSegment) string {
	if len(archived) == 0 {
		return ""
	}
	return fmt.Sprintf("  records %s are in %d archived %s, not checked here: verify them with stage4 audit verify SEGMENT",
		recordRanges(archived), len(archived), plural(len(archived), "segment", "segments"))
}

// recordRanges writes the sequences of segments as ranges, joining
// segments that follow each other: "1 to 5000" or "1 to 10, 21 to 30".
func recordRanges(segs []segstore.ArchivedSegment) string {
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
func archivedBelow(archived []segstore.ArchivedSegment, size uint64) string {
	var need []segstore.ArchivedSegment
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

// verifySegment verifies one segment file (segstore.VerifySegment) and
// says whether it was checked against its seal.
func verifySegment(path string, opts []audit.VerifyOption) verifyOutcome {
	res, err := segstore.VerifySegment(path, opts...)
	out := verifyOutcome{res: res.VerifyResult, err: err, offsets: true, firstRecord: res.First}
	if err != nil {
		return out
	}
	name := filepath.Base(path)
	if res.Records < res.First {
		out.okLine = fmt.Sprintf("OK segment %s: no records yet (a segment just begun)", name)
	} else {
		out.okLine = fmt.Sprintf("OK segment %s: records %d to %d, previous hash %s, last hash %s",
			name, res.First, res.Records, res.PreviousHash, res.LastHash)
	}
	out.notes = []string{"  " + sealStatus(path, res.Sealed)}
	return out
}

// sealStatus says what the segment at path was checked against besides
// its own records. VerifySegment takes an unreadable seal file for none,
// so this tells the cases apart.
func sealStatus(path string, sealed bool) string {
	if sealed {
		return "matches its seal in " + segstore.SealsFile
	}
	seals := filepath.Join(filepath.Dir(path), segstore.SealsFile)
	_, _, err := segstore.ReadSeals(seals)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no seal file beside it: checked on its own"
	case err != nil:
		return fmt.Sprintf("the seal file beside it is unreadable (%v): checked on its own; verify the log directory", err)
	}
	return "not sealed in the " + segstore.SealsFile + " beside it (the active segment, or one of another log): checked on its own"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
