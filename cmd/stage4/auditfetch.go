package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/atomicfile"
)

const auditCheckpointUsage = `Usage: stage4 audit checkpoint --addr HOST:PORT --verifier-key KEY --out DIR [TLS flags]

Fetches the latest signed checkpoint from a running Stage-4 (GetCheckpoint),
checks its signature with the verifier key, and stores it in DIR as
YYYYMMDDTHHMMSSZ.txt (the UTC time of the fetch), written whole and synced
before it gets its name, never replacing a file. It prints the file, the
tree size and the root. Keep DIR where Stage-4's operators cannot change it
(another machine, a write-once bucket, a git repository), and check the
log against what you kept with stage4 audit verify --checkpoint.

A reader of the audit log is a caller whose verified client certificate
names an identity on serve's --audit-readers: give that certificate with
--cert-file and --key-file, and the CA of Stage-4's certificate with
--ca-file (the system roots when empty). --plaintext is for stage4 dev and
for a sidecar that does the TLS.

Exit status: 0 stored; 1 not stored (Stage-4 unreachable or refusing, a
checkpoint that does not verify, DIR not writable), and nothing written;
2 bad command line.
`

// auditCheckpointFlags holds audit checkpoint's flag values.
type auditCheckpointFlags struct {
	addr, out, verifierKey string
	conn                   readerConnFlags
	timeout                time.Duration
}

// newAuditCheckpointFlags declares audit checkpoint's flags.
func newAuditCheckpointFlags() (*flag.FlagSet, *auditCheckpointFlags) {
	fs := newFlagSet("audit checkpoint", auditCheckpointUsage)
	f := &auditCheckpointFlags{}
	fs.StringVar(&f.addr, "addr", "", "`host:port` of Stage-4's gRPC server; required")
	fs.StringVar(&f.out, "out", "", "`directory` to store the checkpoint in (created when missing); required")
	fs.StringVar(&f.verifierKey, "verifier-key", "", "the log's verifier `key` (NAME+hash+key, from stage4 audit keygen), or a file holding it; required")
	f.conn.register(fs)
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "bound on the whole fetch")
	return fs, f
}

// runAuditCheckpoint is the audit checkpoint command.
func runAuditCheckpoint(args []string, stdout, stderr io.Writer) error {
	fs, f := newAuditCheckpointFlags()
	if err := parseFlags(fs, args, stderr, false); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usageError("audit checkpoint: unexpected arguments %q", fs.Args())
	case f.addr == "" || f.out == "" || f.verifierKey == "":
		return usageError("audit checkpoint: --addr, --verifier-key and --out are required (stage4 help audit checkpoint)")
	case f.timeout <= 0:
		return usageError("audit checkpoint: --timeout must be positive")
	}
	if err := f.conn.check(); err != nil {
		return usageError("audit checkpoint: %w", err)
	}
	verifier, err := loadVerifier(f.verifierKey)
	if err != nil {
		return usageError("audit checkpoint: %w", err)
	}
	conn, err := f.conn.dial(f.addr)
	if err != nil {
		return usageError("audit checkpoint: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	defer conn.Close()
	resp, err := stage4v1.NewStage4ServiceClient(conn).GetCheckpoint(ctx, &stage4v1.GetCheckpointRequest{})
	if err != nil {
		return fmt.Errorf("audit checkpoint: GetCheckpoint from %s: %w", f.addr, err)
	}
	msg := []byte(resp.GetCheckpoint())
	cp, err := audit.OpenCheckpoint(msg, verifier)
	if err != nil {
		return fmt.Errorf("audit checkpoint: the checkpoint from %s does not verify with the key %s: %w", f.addr, verifier.Name(), err)
	}
	path, err := storeNew(f.out, time.Now().UTC().Format("20060102T150405Z")+".txt", msg)
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	fmt.Fprintf(stdout, "%s\n  %s, tree size %d, root %s\n", path, cp.Origin, cp.Size, cp.Root)
	return nil
}

// storeNew writes data to dir/name, creating dir when missing, and never
// replaces a file there; dir never holds a partial checkpoint under a
// checkpoint's name. A checkpoint is public: readable by all.
func storeNew(dir, name string, data []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	if err := atomicfile.Create(path, data, 0o644); err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("%s exists already; not replaced", path)
		}
		return "", err
	}
	return path, nil
}
