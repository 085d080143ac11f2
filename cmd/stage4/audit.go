package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
)

const auditVerifyUsage = `Usage: stage4 audit verify [--checkpoint FILE --verifier-key KEY] DIR|SEGMENT|FILE|URL

Walks the hash chain of an audit log from its first record and checks every
record's hash, sequence and previous_hash. The log is one of:

  DIR      a log directory (what stage4 serve writes): every segment file in
           it, in order, each sealed one also against its line in
           seals.jsonl (length, first and last record, the hashes at both
           ends), the seals against each other, and the chain across
           segments. Sealed segments an operator moved away (archived) are
           not read: the chain is taken across them from their seals, and
           their records are named as not checked here.
  SEGMENT  one segment file (00000000000000000001.jsonl ...), say an archived
           one: its records from the sequence its name states and the
           previous_hash of its first record, and, when the seals.jsonl
           beside it lists it, that it matches its seal.
  FILE     a single-file log from before segments.
  URL      a PostgreSQL database (postgres:// or postgresql://); it also
           checks that the indexed columns match each record, that no
           sequence is stored twice and that the chain's head row matches
           the last record.

Prints "OK", the record count and the last hash for an intact log (keep the
hash elsewhere: it is what shows a later truncation), and for a directory
the number of segments; for a damaged one, "DAMAGED" with the first bad
sequence, for a local log its byte offset (in the segment that the reason
names, for a directory), and the reason. An
incomplete last record without a newline is the trace of a crash
mid-write, which was never acknowledged: it is reported but is not damage.
Progress goes to stderr when stderr is a terminal.

With --checkpoint (a checkpoint kept from GetCheckpoint) and --verifier-key
(the verifier key, or a file holding it), it also checks the checkpoint's
signature and that the log's first records, rehashed here into their Merkle
tree (no stored tree hash is trusted), reproduce the root the checkpoint
signs: a log changed after the checkpoint was signed fails this, even when
its hash chain was recomputed and is intact. That needs every record from
the first: a directory whose archived segments hold records the checkpoint
covers fails it until they are put back, and a single segment is refused.

Exit status: 0 intact, 1 damaged (or, with --checkpoint, not matching it,
or not checkable for archived segments), 2 missing or unreadable log,
unreachable database or a wrong number of arguments, 3 a checkpoint file
that is empty or whose signature does not verify with --verifier-key (no
answer, not evidence of tampering).
`

// auditVerifyFlags holds audit verify's flag values.
type auditVerifyFlags struct {
	checkpoint, verifierKey string
}

// newAuditVerifyFlags declares audit verify's flags.
func newAuditVerifyFlags() (*flag.FlagSet, *auditVerifyFlags) {
	fs := newFlagSet("audit verify", auditVerifyUsage)
	f := &auditVerifyFlags{}
	fs.StringVar(&f.checkpoint, "checkpoint", "", "`file` holding a signed checkpoint that the log must reproduce")
	fs.StringVar(&f.verifierKey, "verifier-key", "", "the checkpoint's verifier `key` (NAME+hash+key), or a file holding it")
	return fs, f
}

const auditUsage = `Usage: stage4 audit verify|keygen|prove|checkpoint|monitor ...

  stage4 audit verify [--checkpoint FILE --verifier-key KEY] DIR|SEGMENT|FILE|URL
  stage4 audit keygen NAME --out FILE
  stage4 audit prove --checkpoint FILE --verifier-key KEY --sequence N DIR|FILE|URL
  stage4 audit checkpoint --addr HOST:PORT --verifier-key KEY --out DIR [TLS flags]
  stage4 audit monitor --addr HOST:PORT --verifier-key KEY --state DIR [--witness-policy FILE] [--interval D]

stage4 help audit COMMAND shows a command's help.
`

// runAudit dispatches the audit subcommands.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "monitor":
			return runAuditMonitor(ctx, args[1:], stdout, stderr)
		case "verify":
			return runAuditVerify(args[1:], stdout, stderr)
		case "keygen":
			return runAuditKeygen(args[1:], stdout, stderr)
		case "prove":
			return runAuditProve(args[1:], stdout, stderr)
		case "checkpoint":
			return runAuditCheckpoint(args[1:], stdout, stderr)
		}
	}
	fmt.Fprint(stderr, auditUsage)
	return silentExit(exitUsage)
}

// runAuditVerify is the audit verify command.
func runAuditVerify(args []string, stdout, stderr io.Writer) error {
	fs, f := newAuditVerifyFlags()
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return silentExit(exitUsage)
	}
	if (f.checkpoint == "") != (f.verifierKey == "") {
		return usageError("audit verify: --checkpoint and --verifier-key go together")
	}
	driver, loc, err := audit.Resolve(pos[0])
	if err != nil {
		return usageError("audit verify: %w", err)
	}
	var cfg audit.VerifyConfig
	var check *checkpointCheck
	if f.checkpoint != "" {
		cp, err := openCheckpointFile(f.checkpoint, f.verifierKey)
		if err != nil {
			return err
		}
		check = newCheckpointCheck(cp)
		cfg.Options = append(cfg.Options, check.option())
		cfg.RequireFirst = max(cp.Size, 1)
	}
	cfg.Progress = progressPrinter(logSize(loc), stderr)
	out, verr := driver.Verify(context.Background(), loc, cfg)
	if verr != nil && cfg.Progress != nil {
		fmt.Fprintln(stderr) // end the progress line, which stopped short
	}
	res := out.Result
	var chainErr *audit.ChainError
	switch {
	case errors.As(verr, &chainErr):
		if out.Offsets {
			fmt.Fprintf(stdout, "DAMAGED at sequence %d (byte offset %d): %s\n", chainErr.Sequence, chainErr.Offset, chainErr.Reason)
		} else {
			fmt.Fprintf(stdout, "DAMAGED at sequence %d: %s\n", chainErr.Sequence, chainErr.Reason)
		}
		switch first := max(out.FirstRecord, 1); {
		case first == 1 || res.Records >= first:
			fmt.Fprintf(stdout, "  records %d to %d are intact\n", first, res.Records)
		default:
			fmt.Fprintf(stdout, "  no record of the segment is intact\n")
		}
		printLines(stdout, out.DamagedNotes)
		return silentExit(exitFailure)
	case verr != nil:
		return usageError("audit verify: %w", verr)
	case out.Refusal != "":
		fmt.Fprint(stdout, out.Refusal)
		return silentExit(exitFailure)
	}
	if check != nil {
		var cpOut strings.Builder
		if err := check.report(&cpOut, res.Records); err != nil {
			if !errors.Is(err, errCheckpointNotMatched) {
				return fmt.Errorf("audit verify: %w", err)
			}
			fmt.Fprint(stdout, cpOut.String())
			fmt.Fprintf(stdout, "  the hash chain of %d records is intact, last hash %s: the chain was recomputed after the change\n", res.Records, res.LastHash)
			return silentExit(exitFailure)
		}
		defer fmt.Fprint(stdout, cpOut.String())
	}
	if out.OKLine != "" {
		fmt.Fprintln(stdout, out.OKLine)
	} else {
		fmt.Fprintf(stdout, "OK %d records, last hash %s\n", res.Records, res.LastHash)
	}
	if res.TrailingBytes > 0 {
		fmt.Fprintf(stdout, "  plus an incomplete last line of %d bytes (a crash trace; stage4 cuts it off when it opens the log)\n", res.TrailingBytes)
	}
	printLines(stdout, out.Notes)
	return nil
}

// logSize is the number of bytes verifying loc reads at most, for the
// progress line: a file's size, the sum of a directory's segment files
// (the active one counted at its preallocated size), 0 for a URL.
func logSize(loc audit.Location) int64 {
	if loc.IsURL() {
		return 0
	}
	fi, err := os.Stat(loc.Path)
	if err != nil {
		return 0
	}
	if !fi.IsDir() {
		return fi.Size()
	}
	entries, err := os.ReadDir(loc.Path)
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

func printLines(w io.Writer, lines []string) {
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// progressMinBytes is the smallest log that gets a progress line: smaller
// ones verify in well under a second.
const progressMinBytes = 16 << 20

// progressPrinter returns a progress callback that redraws one line on
// stderr for a log of size bytes, or nil when stderr is not a terminal
// (scripts and CI logs must not fill up with carriage returns) or the log
// is small.
func progressPrinter(size int64, stderr io.Writer) func(int64) {
	f, ok := stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) || size < progressMinBytes {
		return nil
	}
	return func(n int64) {
		n = min(n, size)
		fmt.Fprintf(stderr, "\rverifying: %d of %d MiB (%d%%)", n>>20, size>>20, n*100/size)
		if n >= size {
			fmt.Fprint(stderr, "\n")
		}
	}
}
