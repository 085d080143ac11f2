// Binary stage4load measures what Stage-4 costs on top of Stage-3. In one
// invocation it drives these configurations in interleaved rounds, all
// against the same reference Stage-3 process on 127.0.0.1:
//
//	(a) direct: calls to Stage-3 itself, the cost of the work;
//	(b) proxy: a bare Stage4Service that only converts and forwards with
//	    stage3client, the floor any gateway pays (this binary, run as the
//	    hidden subcommand "stage4load proxy" in its own process);
//	(c) stage4: the real "stage4 serve" with validation, fsynced audit log,
//	    info logging and metrics on;
//	(d) the same stage4 serve with its audit log in PostgreSQL, and
//	(e) two of them on one database, the calls split across them: both
//	    only at --pg-concurrency, on databases this run creates on
//	    --postgres-url and drops.
//
// Stage-3, (b) and (c) are separate processes, so the CPU time each uses can
// be read from /proc and none of it is the load generator's. It then
// measures ExecutePlan against plan size through (c), optionally a soak for
// memory growth, an open-loop run and, with --readers-records, ExecutePlan
// while heavy audit readers run (two more stage4 serve processes on a large
// log, readers.go), and writes a markdown report and the raw results as
// JSON.
//
// "stage4load burst" measures something else: stage4's resident set under
// a burst of concurrent maximum-size requests, and after it. "stage4load
// calls" makes a fixed number of calls to a running gateway, for
// tools/callgrind.sh. "stage4load readers" runs only the audit readers
// measurement (ExecutePlan while heavy ListAuditEvents readers run), which
// the benchmark runs too with --readers-records.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "stage4load: %v\n", err)
		os.Exit(1)
	}
}

// run dispatches to the hidden proxy subcommand, the burst, calls, fill,
// readers and scale subcommands or the benchmark.
func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "proxy" {
		return runProxy(ctx, args[1:])
	}
	if len(args) > 0 && args[0] == "burst" {
		return runBurstCommand(ctx, args[1:], os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "calls" {
		return runCalls(ctx, args[1:], os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "fill" {
		return runFill(ctx, args[1:], os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "readers" {
		return runReadersCommand(ctx, args[1:], os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "scale" {
		return runScale(ctx, args[1:], os.Stdout, os.Stderr)
	}
	return runBench(ctx, args, os.Stdout, os.Stderr)
}
