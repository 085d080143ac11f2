package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	"github.com/stage4/stage4/audit/pgstore"
)

const auditVerifyUsage = `Usage: stage4 audit verify FILE|URL

Walks the hash chain of an audit log from its first record and checks every
record's hash, sequence and previous_hash. The log is a file, or a
PostgreSQL database given as a postgres:// or postgresql:// URL; for a
database it also checks that the indexed columns match each record, that no
sequence is stored twice and that the chain's head row matches the last
record. Prints "OK", the record count and the last hash for an intact log
(keep the hash elsewhere: it is what shows a later truncation); for a
damaged one, "DAMAGED" with the first bad sequence, for a file its byte
offset, and the reason. An incomplete last line of a file without a newline
is the trace of a crash mid-write, which was never acknowledged: it is
reported but is not damage. Progress goes to stderr when stderr is a
terminal.

Exit status: 0 intact, 1 damaged, 2 missing or unreadable file, unreachable
database or a wrong number of arguments.
`

// newAuditVerifyFlags declares audit verify's (empty) flag set, for -h.
func newAuditVerifyFlags() *flag.FlagSet {
	return newFlagSet("audit verify", auditVerifyUsage)
}

// runAudit dispatches the audit subcommands; verify is the only one.
func runAudit(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprint(stderr, auditVerifyUsage)
		return silentExit(exitUsage)
	}
	return runAuditVerify(args[1:], stdout, stderr)
}

// runAuditVerify is the audit verify command.
func runAuditVerify(args []string, stdout, stderr io.Writer) error {
	fs := newAuditVerifyFlags()
	if err := parseFlags(fs, args, stderr, false); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return silentExit(exitUsage)
	}
	path := fs.Arg(0)
	var opts []audit.VerifyOption
	progress := progressPrinter(path, stderr)
	if progress != nil {
		opts = append(opts, audit.WithProgress(progress))
	}

	var res audit.VerifyResult
	var err error
	isDB := pgstore.IsURL(path)
	if isDB {
		res, err = pgstore.Verify(context.Background(), path)
	} else {
		res, err = filestore.Verify(path, opts...)
	}
	if err != nil && progress != nil {
		fmt.Fprintln(stderr) // end the progress line, which stopped short
	}
	var chainErr *audit.ChainError
	switch {
	case errors.As(err, &chainErr):
		if isDB {
			fmt.Fprintf(stdout, "DAMAGED at sequence %d: %s\n", chainErr.Sequence, chainErr.Reason)
		} else {
			fmt.Fprintf(stdout, "DAMAGED at sequence %d (byte offset %d): %s\n", chainErr.Sequence, chainErr.Offset, chainErr.Reason)
		}
		fmt.Fprintf(stdout, "  records 1 to %d are intact\n", res.Records)
		return silentExit(exitFailure)
	case err != nil:
		return usageError("audit verify: %w", err)
	}
	fmt.Fprintf(stdout, "OK %d records, last hash %s\n", res.Records, res.LastHash)
	if res.TrailingBytes > 0 {
		fmt.Fprintf(stdout, "  plus an incomplete last line of %d bytes (a crash trace; stage4 cuts it off when it opens the log)\n", res.TrailingBytes)
	}
	return nil
}

// progressMinBytes is the smallest log that gets a progress line: smaller
// ones verify in well under a second.
const progressMinBytes = 16 << 20

// progressPrinter returns a progress callback that redraws one line on
// stderr, or nil when stderr is not a terminal (scripts and CI logs must
// not fill up with carriage returns) or the file is small.
func progressPrinter(path string, stderr io.Writer) func(int64) {
	f, ok := stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Size() < progressMinBytes {
		return nil
	}
	size := fi.Size()
	return func(n int64) {
		fmt.Fprintf(stderr, "\rverifying: %d of %d MiB (%d%%)", n>>20, size>>20, n*100/size)
		if n >= size {
			fmt.Fprint(stderr, "\n")
		}
	}
}
