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
	"github.com/stage4/stage4/audit/filestore"
	"github.com/stage4/stage4/audit/pgstore"
)

const auditVerifyUsage = `Usage: stage4 audit verify [--checkpoint FILE --verifier-key KEY] FILE|URL

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

With --checkpoint (a checkpoint kept from GetCheckpoint) and --verifier-key
(the verifier key, or a file holding it), it also checks the checkpoint's
signature and that the log's first records, rehashed here into their Merkle
tree (no stored tree hash is trusted), reproduce the root the checkpoint
signs: a log changed after the checkpoint was signed fails this, even when
its hash chain was recomputed and is intact.

Exit status: 0 intact, 1 damaged (or, with --checkpoint, not matching it or
a bad signature), 2 missing or unreadable file, unreachable database or a
wrong number of arguments.
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

const auditUsage = `Usage: stage4 audit verify|keygen|prove ...

  stage4 audit verify [--checkpoint FILE --verifier-key KEY] FILE|URL
  stage4 audit keygen NAME --out FILE
  stage4 audit prove --checkpoint FILE --verifier-key KEY --sequence N FILE|URL

stage4 help audit COMMAND shows a command's help.
`

// runAudit dispatches the audit subcommands.
func runAudit(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "verify":
			return runAuditVerify(args[1:], stdout, stderr)
		case "keygen":
			return runAuditKeygen(args[1:], stdout, stderr)
		case "prove":
			return runAuditProve(args[1:], stdout, stderr)
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
	path := pos[0]
	var opts []audit.VerifyOption
	var check *checkpointCheck
	if f.checkpoint != "" {
		cp, err := openCheckpointFile(f.checkpoint, f.verifierKey)
		if err != nil {
			return err
		}
		check = newCheckpointCheck(cp)
		opts = append(opts, check.option())
	}
	progress := progressPrinter(path, stderr)
	if progress != nil {
		opts = append(opts, audit.WithProgress(progress))
	}

	var res audit.VerifyResult
	isDB := pgstore.IsURL(path)
	if isDB {
		res, err = pgstore.Verify(context.Background(), path, opts...)
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
