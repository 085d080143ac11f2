package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/internal/atomicfile"
	"github.com/stage4/stage4/internal/witness"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

const auditMonitorUsage = `Usage: stage4 audit monitor --addr HOST:PORT --verifier-key KEY --state DIR
                            [--witness-policy FILE] [--interval DURATION] [TLS flags]

Checks, as an auditor's cron job does, that a running Stage-4 never shows
two trees that are not one the extension of the other. It fetches the
latest checkpoint over gRPC (GetCheckpoint; with mTLS, as any reader of the
audit log: the client certificate must carry an identity on the server's
--audit-readers), checks its signature with --verifier-key and, with
--witness-policy, that the cosignatures on it meet the policy's quorum;
then it asks the server to prove, with GetConsistencyProof, that its tree
extends the checkpoint kept in --state from the last run, checks the proof
itself (RFC 6962, golang.org/x/mod/sumdb/tlog.CheckTree), and keeps the
newer checkpoint there (DIR/checkpoint). The first run keeps what it
fetched.

When the proof fails, or the server serves a different tree of the kept
size, or can no longer reach the kept tree, the log was forked or rolled
back: both checkpoints (and the proof) are saved in DIR/fork-<time>/, the
evidence to show, and the command exits 1. Keep --state where the
Stage-4 operators cannot write.

With --interval it runs on, a check every interval, until a fork (exit 1)
or a signal (exit 0); failures to fetch or verify are reported and tried
again at the next check.

Exit status: 0 consistent, 1 inconsistent (proof of a fork: both
checkpoints saved), 2 bad command line or an unusable --state, 3 the
checkpoint or a proof could not be fetched, or its signature (or the
witnesses' quorum) does not verify: no answer, not evidence of tampering.
`

// auditMonitorFlags holds audit monitor's flag values.
type auditMonitorFlags struct {
	addr, verifierKey, witnessPolicy, state string
	interval, timeout                       time.Duration
	conn                                    readerConnFlags
}

// newAuditMonitorFlags declares audit monitor's flags; their names are a
// public interface (auditors' cron jobs).
func newAuditMonitorFlags() (*flag.FlagSet, *auditMonitorFlags) {
	fs := newFlagSet("audit monitor", auditMonitorUsage)
	f := &auditMonitorFlags{}
	fs.StringVar(&f.addr, "addr", "", "`host:port` (or gRPC target) of the Stage-4 to check; required")
	fs.StringVar(&f.verifierKey, "verifier-key", "", "the log's verifier `key` (NAME+hash+key, as audit keygen prints it), or a file holding it; required")
	fs.StringVar(&f.witnessPolicy, "witness-policy", "", "witness policy `file` (Sigsum format, URLs not needed): the checkpoint's cosignatures must meet its quorum")
	fs.StringVar(&f.state, "state", "", "`directory` that keeps the latest consistent checkpoint between runs, and the evidence of a fork; required")
	fs.DurationVar(&f.interval, "interval", 0, "run on, checking every `interval`; 0 checks once and exits")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "bound on one check's calls to the server")
	f.conn.register(fs)
	return fs, f
}

// monitorFile is where --state keeps the latest consistent checkpoint.
const monitorFile = "checkpoint"

// runAuditMonitor is the audit monitor command.
func runAuditMonitor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, f := newAuditMonitorFlags()
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 0 || f.addr == "" || f.verifierKey == "" || f.state == "" {
		fs.Usage()
		return silentExit(exitUsage)
	}
	if f.interval < 0 || f.timeout <= 0 {
		return usageError("audit monitor: --interval must not be negative, --timeout must be positive")
	}
	m, err := newMonitor(f, stdout)
	if err != nil {
		return err
	}
	defer m.conn.Close()
	if f.interval == 0 {
		return m.check(ctx)
	}
	ticker := time.NewTicker(f.interval)
	defer ticker.Stop()
	for {
		err := m.check(ctx)
		var ee *exitError
		switch {
		case err == nil:
		case errors.As(err, &ee) && ee.code == exitUnverified:
			fmt.Fprintf(stderr, "stage4: %v\n", err) // no answer this time: again at the next check
		default:
			return err // a fork, or unusable state
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// monitor is one auditor's view of one Stage-4.
type monitor struct {
	f        *auditMonitorFlags
	verifier note.Verifier
	policy   *witness.Policy
	conn     *grpc.ClientConn
	client   stage4v1.Stage4ServiceClient
	out      io.Writer
}

func newMonitor(f *auditMonitorFlags, out io.Writer) (*monitor, error) {
	v, err := loadVerifier(f.verifierKey)
	if err != nil {
		return nil, usageError("audit monitor: %w", err)
	}
	m := &monitor{f: f, verifier: v, out: out}
	if f.witnessPolicy != "" {
		if m.policy, err = witness.ReadPolicyFile(f.witnessPolicy); err != nil {
			return nil, usageError("audit monitor: --witness-policy: %w", err)
		}
	}
	if err := os.MkdirAll(f.state, 0o700); err != nil {
		return nil, usageError("audit monitor: --state: %w", err)
	}
	if err := f.conn.check(); err != nil {
		return nil, usageError("audit monitor: %w", err)
	}
	if m.conn, err = f.conn.dial(f.addr); err != nil {
		return nil, usageError("audit monitor: %w", err)
	}
	m.client = stage4v1.NewStage4ServiceClient(m.conn)
	return m, nil
}

// unverified is exit 3: no answer.
func unverified(format string, args ...any) error {
	return &exitError{code: exitUnverified, err: fmt.Errorf("audit monitor: "+format, args...)}
}

// check makes one check: fetch, verify, compare with the kept checkpoint,
// keep the newer one.
func (m *monitor) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.f.timeout)
	defer cancel()
	res, err := m.client.GetCheckpoint(ctx, &stage4v1.GetCheckpointRequest{})
	if err != nil {
		return unverified("fetch the checkpoint from %s: %v", m.f.addr, err)
	}
	msg := []byte(res.GetCheckpoint())
	served, cosigned, err := m.open(msg)
	if err != nil {
		return unverified("the checkpoint %s served does not verify with %s: %v", m.f.addr, keyName(m.verifier), err)
	}
	keptMsg, err := os.ReadFile(filepath.Join(m.f.state, monitorFile))
	if errors.Is(err, os.ErrNotExist) {
		if err := m.keep(msg); err != nil {
			return err
		}
		fmt.Fprintf(m.out, "OK first checkpoint kept: %d records, root %s%s\n", served.Size, served.Root, cosigned)
		return nil
	}
	if err != nil {
		return usageError("audit monitor: --state: %w", err)
	}
	// What was kept was checked when it was kept; its signature again,
	// against a --state written by someone else.
	kept, err := audit.OpenCheckpoint(keptMsg, m.verifier)
	if err != nil {
		return usageError("audit monitor: the checkpoint kept in %s does not verify with the key: %v", m.f.state, err)
	}
	switch {
	case served.Size == kept.Size && served.Root == kept.Root:
		fmt.Fprintf(m.out, "OK no new records: %d records, root %s%s\n", served.Size, served.Root, cosigned)
		return nil
	case served.Size == kept.Size:
		return m.fork(keptMsg, msg, nil, fmt.Sprintf("the server signs two different trees of %d records: root %s, kept, and %s, served now", kept.Size, kept.Root, served.Root))
	case served.Size > kept.Size:
		proof, err := m.prove(ctx, kept.Size, served.Size)
		if err != nil {
			return err
		}
		if tlog.CheckTree(proof, int64(served.Size), served.Root, int64(kept.Size), kept.Root) != nil {
			return m.fork(keptMsg, msg, proof, fmt.Sprintf("the server's proof that its tree of %d records extends the kept one of %d does not check: the log was forked or rewritten", served.Size, kept.Size))
		}
		if err := m.keep(msg); err != nil {
			return err
		}
		fmt.Fprintf(m.out, "OK %d records, root %s: extends the kept checkpoint of %d records (consistency proof checked), kept now%s\n",
			served.Size, served.Root, kept.Size, cosigned)
		return nil
	default:
		// An older checkpoint than the one kept: the server must still
		// prove that its tree reaches the kept one.
		proof, err := m.prove(ctx, served.Size, kept.Size)
		var ee *exitError
		if errors.As(err, &ee) && ee.code == exitFailure {
			return m.fork(keptMsg, msg, nil, fmt.Sprintf("the server serves a checkpoint of %d records and no longer holds the kept tree of %d: the log was rolled back (%v)", served.Size, kept.Size, ee.err))
		}
		if err != nil {
			return err
		}
		if tlog.CheckTree(proof, int64(kept.Size), kept.Root, int64(served.Size), served.Root) != nil {
			return m.fork(keptMsg, msg, proof, fmt.Sprintf("the served checkpoint of %d records is not a prefix of the kept one of %d: the log was forked", served.Size, kept.Size))
		}
		fmt.Fprintf(m.out, "OK %d records, older than the kept checkpoint of %d, which extends it (a stale server); the kept one stays%s\n",
			served.Size, kept.Size, cosigned)
		return nil
	}
}

// open checks the served checkpoint's signature and, with a policy, its
// cosignatures, and describes them.
func (m *monitor) open(msg []byte) (audit.Checkpoint, string, error) {
	if m.policy == nil {
		cp, err := audit.OpenCheckpoint(msg, m.verifier)
		return cp, "", err
	}
	v, err := witness.VerifyCheckpoint(msg, m.verifier, m.policy)
	if err != nil {
		return audit.Checkpoint{}, "", err
	}
	var parts []string
	for _, c := range v.Cosignatures {
		parts = append(parts, fmt.Sprintf("%s %s ago", c.Witness, time.Since(c.Time).Truncate(time.Second)))
	}
	return v.Checkpoint, "; cosigned by " + strings.Join(parts, ", "), nil
}

// prove fetches the consistency proof from first to second records. A
// server that answers that second is beyond its tree (OUT_OF_RANGE) no
// longer holds a tree it signed: exit 1 for the caller to report.
func (m *monitor) prove(ctx context.Context, first, second uint64) (tlog.TreeProof, error) {
	if first == 0 {
		return nil, nil // every tree extends the empty one
	}
	res, err := m.client.GetConsistencyProof(ctx, &stage4v1.GetConsistencyProofRequest{FirstSize: first, SecondSize: second})
	if err != nil {
		if isOutOfRange(err) {
			return nil, &exitError{code: exitFailure, err: err}
		}
		return nil, unverified("fetch the consistency proof from %d to %d records: %v", first, second, err)
	}
	proof := make(tlog.TreeProof, len(res.GetHashes()))
	for i, h := range res.GetHashes() {
		if len(h) != tlog.HashSize {
			return nil, unverified("the consistency proof holds a hash of %d bytes", len(h))
		}
		proof[i] = tlog.Hash(h)
	}
	return proof, nil
}

// keep makes msg the kept checkpoint, atomically.
func (m *monitor) keep(msg []byte) error {
	if err := atomicfile.Replace(filepath.Join(m.f.state, monitorFile), msg, 0o600); err != nil {
		return usageError("audit monitor: --state: %w", err)
	}
	return nil
}

// fork saves the evidence of an inconsistency and ends with exit 1: the
// kept checkpoint stays kept.
func (m *monitor) fork(kept, served []byte, proof tlog.TreeProof, why string) error {
	dir := filepath.Join(m.f.state, "fork-"+time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return usageError("audit monitor: save the evidence: %w", err)
	}
	var p strings.Builder
	for _, h := range proof {
		p.WriteString(h.String() + "\n")
	}
	for name, data := range map[string][]byte{"kept": kept, "served": served, "proof": []byte(p.String()),
		"README": []byte(why + "\n" + "kept: the checkpoint kept before; served: the one " + m.f.addr + " served; proof: its consistency proof, one hash a line (base64).\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return usageError("audit monitor: save the evidence: %w", err)
		}
	}
	fmt.Fprintf(m.out, "INCONSISTENT: %s\n  both checkpoints are saved in %s\n", why, dir)
	return silentExit(exitFailure)
}

// isOutOfRange reports a gRPC OUT_OF_RANGE: a size beyond the server's tree.
func isOutOfRange(err error) bool { return status.Code(err) == codes.OutOfRange }
