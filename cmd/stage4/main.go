// Binary stage4 is the Stage-4 plan gateway and its tools: the production
// gRPC server (serve), a self-contained local setup (dev), an offline plan
// validator (validate), the audit log's tools (audit verify, keygen and
// prove) and the reference Stage-3 executor (reference-stage3).
//
// main only turns signals into a context, calls run and maps its error to an
// exit status, so that every command can be tested through run or the real
// binary alike.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/stage4/stage4/internal/gateway"
)

// Exit statuses shared by every command; users' scripts depend on them.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and the answer is "no" (invalid plan, damaged log) or it failed
	exitUsage   = 2 // bad command line or unusable input
	// exitUnverified: an auditor's command could not fetch a checkpoint or
	// verify its signature (an empty file, another key, a server that does
	// not answer): no answer, and no evidence of tampering, which is 1.
	exitUnverified = 3
)

func main() {
	// The live heap is small (tens of MiB) and short-lived garbage is most
	// of it, so the default GOGC=100 spends a tenth of the gateway's CPU on
	// collections under load. 400 trades a few MiB of RSS for that CPU
	// (see docs/PERFORMANCE.md); an explicit GOGC in the environment wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	setDefaultMemoryLimit()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	// The first signal starts a graceful shutdown; restoring the default
	// handling then lets a second one end the process at once. The audit
	// log is built to survive that: Open repairs it on the next start.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitError carries the exit status a command chose. A nil err means the
// command has already told the user everything (for example printed the
// violations of an invalid plan) and only the status remains.
type exitError struct {
	code int
	err  error
}

// Error implements error; only tests see the text of a silent exit.
func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

// Unwrap returns the cause, for errors.Is and errors.As.
func (e *exitError) Unwrap() error { return e.err }

// usageError reports a bad command line or unusable input: exit status 2.
func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// silentExit ends the command with code without printing anything more.
func silentExit(code int) error {
	return &exitError{code: code}
}

// exitCode prints err (if it has something to say) and returns the process
// exit status for it: 0 for nil, the chosen code for an exitError, 1 for any
// other error.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	code := exitFailure
	if errors.Is(err, gateway.ErrConfig) {
		code = exitUsage
	}
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		if ee.err == nil {
			return code
		}
	}
	fmt.Fprintf(stderr, "stage4: %v\n", err)
	return code
}

// run dispatches to the command named by args[0]. It returns when the
// command is done; long-running commands return after ctx is cancelled and
// they have shut down.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return silentExit(exitUsage)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return runServe(ctx, rest, stdout, stderr)
	case "dev":
		return runDev(ctx, rest, stdout, stderr)
	case "validate":
		return runValidate(rest, stdout, stderr)
	case "audit":
		return runAudit(ctx, rest, stdout, stderr)
	case "reference-stage3":
		return runReferenceStage3(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		return runVersion(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		return runHelp(rest, stdout)
	default:
		fmt.Fprintf(stderr, "stage4: unknown command %q\n\n%s", cmd, usage)
		return silentExit(exitUsage)
	}
}

// runHelp prints the overview, or a command's own usage for "help CMD".
func runHelp(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return nil
	}
	// Each command prints its usage for -h; reuse that instead of keeping a
	// second copy of the text here.
	name := args[0]
	if name == "audit" && len(args) > 1 {
		name = "audit " + args[1]
	}
	fs, ok := commandFlagSets()[name]
	if !ok {
		return usageError("help: unknown command %q", args[0])
	}
	fs.SetOutput(stdout)
	fs.Usage()
	return nil
}

const usage = `stage4 is the Stage-4 plan gateway: it validates a user's plan strictly,
records it in a hash-chained audit log and forwards it once to Stage-3.

Usage:
  stage4 serve --stage3-addr HOST:PORT [flags]   run the production gRPC server
  stage4 dev [flags]                             run Stage-4 and a reference Stage-3 locally
  stage4 validate PLAN.json                      validate a plan offline
  stage4 audit verify LOG                        verify an audit log's hash chain (and a checkpoint);
                                                 LOG is a log directory, one segment, a file or a URL
  stage4 audit keygen NAME --out FILE            make a key that signs the audit log's checkpoints
  stage4 audit prove --sequence N ... LOG        prove one record against a signed checkpoint
  stage4 audit checkpoint --addr HOST:PORT ...   fetch, check and keep the latest signed checkpoint
  stage4 audit monitor --addr HOST:PORT ...      check a Stage-4's checkpoints over gRPC, as an auditor's cron job
  stage4 reference-stage3 [flags]                run the reference Stage-3 alone
  stage4 version                                 print the version and VCS revision (also --version)
  stage4 help [COMMAND]                          show help for a command

Exit status: 0 success, 1 failure (invalid plan, damaged audit log, server
error), 2 bad command line or unusable input, 3 (audit verify, prove and
monitor) a checkpoint that could not be fetched or whose signature does not
verify: no answer, not evidence of tampering.
`
