package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// loadVerifier reads a --verifier-key value: the verifier key itself
// (NAME+<hash>+<key>, as audit keygen prints it) or a file holding it.
func loadVerifier(value string) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(value))
	if err == nil {
		return v, nil
	}
	data, ferr := os.ReadFile(value)
	if ferr != nil {
		return nil, fmt.Errorf("--verifier-key is neither a verifier key (%w) nor a readable file (%w)", err, ferr)
	}
	if v, err = note.NewVerifier(strings.TrimSpace(string(data))); err != nil {
		return nil, fmt.Errorf("--verifier-key %s does not hold a verifier key: %w", value, err)
	}
	return v, nil
}

// openCheckpointFile reads the checkpoint in path and checks its
// signature with the verifier key vkey. A checkpoint that is empty or
// whose signature does not check with the key is no answer (exit 3: a
// failed fetch, the wrong key), not evidence that the log was changed
// (exit 1), nor a usage error.
func openCheckpointFile(path, vkey string) (audit.Checkpoint, error) {
	v, err := loadVerifier(vkey)
	if err != nil {
		return audit.Checkpoint{}, usageError("%w", err)
	}
	msg, err := os.ReadFile(path)
	if err != nil {
		return audit.Checkpoint{}, usageError("--checkpoint: %w", err)
	}
	if len(bytes.TrimSpace(msg)) == 0 {
		return audit.Checkpoint{}, &exitError{code: exitUnverified, err: fmt.Errorf("checkpoint %s is empty: fetch it again", path)}
	}
	// Copying a checkpoint out of JSON (jq -r) adds a newline after the
	// signature block, which no signature covers.
	msg = append(bytes.TrimRight(msg, "\n"), '\n')
	cp, err := audit.OpenCheckpoint(msg, v)
	if err != nil {
		return audit.Checkpoint{}, &exitError{code: exitUnverified, err: fmt.Errorf("checkpoint %s does not verify with %s: %w", path, keyName(v), err)}
	}
	return cp, nil
}

// keyName names a verifier key: <name>+<hash>.
func keyName(v note.Verifier) string { return fmt.Sprintf("%s+%08x", v.Name(), v.KeyHash()) }

// checkpointCheck rehashes a log's records, as audit verify walks them,
// into the tree of the checkpoint's size, trusting no stored tree hash.
type checkpointCheck struct {
	cp      audit.Checkpoint
	tree    *audit.TreeBuilder
	root    tlog.Hash
	reached bool // the log held cp.Size records
	err     error
}

func newCheckpointCheck(cp audit.Checkpoint) *checkpointCheck {
	tree, _ := audit.NewTreeBuilder(0, nil) // an empty tree never fails
	c := &checkpointCheck{cp: cp, tree: tree}
	if cp.Size == 0 {
		c.root, c.err = tree.Root()
		c.reached = true
	}
	return c
}

// option is the audit.WithLineFunc that feeds the check.
func (c *checkpointCheck) option() audit.VerifyOption {
	return audit.WithLineFunc(func(seq uint64, line []byte) {
		if seq > c.cp.Size || c.err != nil {
			return
		}
		if _, c.err = c.tree.Add(line); c.err == nil && seq == c.cp.Size {
			c.root, c.err = c.tree.Root()
			c.reached = true
		}
	})
}

// report prints the outcome for a log of records intact records and
// returns nil when the log reproduces the checkpoint's root.
func (c *checkpointCheck) report(stdout io.Writer, records uint64) error {
	switch {
	case c.err != nil:
		return fmt.Errorf("rehash the log: %w", c.err)
	case !c.reached:
		fmt.Fprintf(stdout, "CHECKPOINT NOT MATCHED: it signs a tree of %d records, the log holds %d: records were removed\n", c.cp.Size, records)
	case c.root != c.cp.Root:
		fmt.Fprintf(stdout, "CHECKPOINT NOT MATCHED: the log's first %d records have root %s, the checkpoint signs %s: the log was changed after it was signed\n",
			c.cp.Size, c.root, c.cp.Root)
	default:
		fmt.Fprintf(stdout, "  checkpoint %s: the first %d records reproduce its root %s\n", c.cp.Origin, c.cp.Size, c.cp.Root)
		return nil
	}
	return errCheckpointNotMatched
}

var errCheckpointNotMatched = errors.New("the log does not reproduce the checkpoint")
