package main

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"io"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

const auditProveUsage = `Usage: stage4 audit prove --checkpoint FILE --verifier-key KEY --sequence N DIR|FILE|URL

Proves that record N of an audit log is in the tree that a signed checkpoint
names, so that an auditor who kept the checkpoint can check one record
without the whole log. The log is a log directory (the record's segment and
the tree file in it; the segment must not be archived), a single-file log
from before segments (its records and the tree file beside it), both read
without disturbing a running stage4, or a PostgreSQL database given as a
postgres:// or postgresql:// URL. Nothing read from the
log is trusted: the record's leaf hash is computed here from its bytes, and
the inclusion proof built from the stored tree hashes is checked against the
checkpoint's root with tlog.CheckRecord (RFC 6962). It prints the record,
its leaf hash and the proof, then OK or NOT PROVEN.

The same proof is served over gRPC by GetInclusionProof (see the README).

Exit status: 0 proven, 1 not proven, 2 bad arguments, a sequence beyond the
checkpoint, or an unreadable log, 3 a checkpoint that is empty or whose
signature does not verify with --verifier-key.
`

// auditProveFlags holds audit prove's flag values.
type auditProveFlags struct {
	checkpoint, verifierKey string
	sequence                uint64
}

// newAuditProveFlags declares audit prove's flags.
func newAuditProveFlags() (*flag.FlagSet, *auditProveFlags) {
	fs := newFlagSet("audit prove", auditProveUsage)
	f := &auditProveFlags{}
	fs.StringVar(&f.checkpoint, "checkpoint", "", "`file` holding the signed checkpoint; required")
	fs.StringVar(&f.verifierKey, "verifier-key", "", "the checkpoint's verifier `key` (NAME+hash+key), or a file holding it; required")
	fs.Uint64Var(&f.sequence, "sequence", 0, "the record's `sequence`; required")
	return fs, f
}

// runAuditProve is the audit prove command.
func runAuditProve(args []string, stdout, stderr io.Writer) error {
	fs, f := newAuditProveFlags()
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 || f.checkpoint == "" || f.verifierKey == "" || f.sequence == 0 {
		fs.Usage()
		return silentExit(exitUsage)
	}
	cp, err := openCheckpointFile(f.checkpoint, f.verifierKey)
	if err != nil {
		return err
	}
	seq := f.sequence
	if seq > cp.Size {
		return usageError("audit prove: sequence %d is beyond the checkpoint's tree of %d records: use a later checkpoint", seq, cp.Size)
	}
	ctx := context.Background()
	driver, loc, err := audit.Resolve(pos[0])
	if err != nil {
		return usageError("audit prove: %w", err)
	}
	src, err := driver.OpenReader(ctx, loc)
	if err != nil {
		return usageError("audit prove: %w", err)
	}
	defer src.Close()
	record, err := src.Record(ctx, seq)
	if err != nil {
		return usageError("audit prove: %w", err)
	}
	leaf := audit.LeafHash(record)
	fmt.Fprintf(stdout, "record %d: %s\n", seq, record)
	fmt.Fprintf(stdout, "leaf hash: %s\n", leaf)
	fmt.Fprintf(stdout, "checkpoint: %s, tree of %d records, root %s\n", cp.Origin, cp.Size, cp.Root)

	notProven := func(format string, args ...any) error {
		fmt.Fprintf(stdout, "NOT PROVEN: "+format+"\n", args...)
		return silentExit(exitFailure)
	}
	ev, _, err := audit.ParseRecord(record)
	if err != nil {
		return notProven("the stored record is damaged: %v", err)
	}
	if ev.Sequence != seq {
		return notProven("the stored record has sequence %d", ev.Sequence)
	}
	hashes := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) { return src.ReadHashes(ctx, idx) })
	proof, err := tlog.ProveRecord(int64(cp.Size), int64(seq-1), hashes)
	if err != nil {
		return notProven("no proof can be built from the stored tree: %v", err)
	}
	fmt.Fprintf(stdout, "inclusion proof (%d hashes):\n", len(proof))
	for _, h := range proof {
		fmt.Fprintf(stdout, "  %s\n", base64.StdEncoding.EncodeToString(h[:]))
	}
	if err := tlog.CheckRecord(proof, int64(cp.Size), cp.Root, int64(seq-1), leaf); err != nil {
		return notProven("%s", whyNotProven(hashes, cp, seq, leaf, proof))
	}
	fmt.Fprintf(stdout, "OK record %d is in the tree of %d records that the checkpoint signs\n", seq, cp.Size)
	return nil
}

// whyNotProven says which of the log's parts does not match the
// checkpoint when a record's proof fails, rather than blaming the record:
//   - the stored tree hashes do not reproduce the checkpoint's root: a
//     damaged or changed tree (file or column), or a log rewritten with
//     its tree; audit verify --checkpoint rehashes the records and tells;
//   - they do, and the proof checks with the leaf hash stored for the
//     record: the record was changed;
//   - they do, and it does not even then: the stored hashes on the
//     record's path are damaged (the record may well be intact).
func whyNotProven(hashes tlog.HashReader, cp audit.Checkpoint, seq uint64, leaf tlog.Hash, proof tlog.RecordProof) string {
	root, err := tlog.TreeHash(int64(cp.Size), hashes)
	switch {
	case err != nil:
		return fmt.Sprintf("the proof does not lead from the record to the checkpoint's root, and the stored tree cannot be read whole (%v)", err)
	case root != cp.Root:
		return fmt.Sprintf("the stored tree hashes do not reproduce the checkpoint's root (they give %s): the tree file (or the tree column) was damaged or changed, "+
			"or the log was rewritten with its tree after the checkpoint was signed; stage4 audit verify --checkpoint rehashes the records and tells which", root)
	}
	stored, err := hashes.ReadHashes([]int64{tlog.StoredHashIndex(0, int64(seq-1))})
	if err != nil {
		return fmt.Sprintf("the proof does not lead from the record to the checkpoint's root, and its stored leaf hash cannot be read (%v)", err)
	}
	if stored[0] != leaf && tlog.CheckRecord(proof, int64(cp.Size), cp.Root, int64(seq-1), stored[0]) == nil {
		return fmt.Sprintf("record %d is not the record the signed tree holds (whose leaf hash is %s, the stored tree's): the record was changed after the checkpoint was signed", seq, stored[0])
	}
	return fmt.Sprintf("the stored tree hashes reproduce the checkpoint's root, but those on record %d's path do not lead to it: the tree file (or the tree column) is damaged; "+
		"stage4 audit verify --checkpoint checks the records without it", seq)
}
