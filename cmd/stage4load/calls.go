package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// runCalls is "stage4load calls": a fixed number of ExecutePlan calls of
// the benchmark plan, from a number of callers, to a Stage4Service already
// running. tools/callgrind.sh counts a gateway's instructions per call
// with it: a count of calls, not a duration, is what that needs.
func runCalls(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stage4load calls", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "host:port of the Stage4Service (loopback only)")
	n := fs.Int("n", 1000, "calls to make")
	conc := fs.Int("concurrency", 64, "callers, each sending its next call when the last one returned")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *n < 1 || *conc < 1 {
		return errors.New("calls: want --addr, and --n and --concurrency of at least 1")
	}
	if err := checkLoopback(*addr); err != nil {
		return err
	}
	cc, err := grpc.NewClient("passthrough:///"+*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	call := env{proxy: stage4v1.NewStage4ServiceClient(cc)}.caller(cfgProxy, benchPlan())
	start := time.Now()
	failed, err := fixedCalls(ctx, call, *n, *conc)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d calls from %d callers in %v\n", *n, *conc, time.Since(start).Round(time.Millisecond))
	if failed.n > 0 {
		return fmt.Errorf("calls: %d of %d failed, first: %s", failed.n, *n, failed.first)
	}
	return nil
}

// fixedCalls makes n calls from conc callers.
func fixedCalls(ctx context.Context, call callFunc, n, conc int) (*errCount, error) {
	var next atomic.Int64
	errs := &errCount{}
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				cctx, cancel := context.WithTimeout(ctx, callTimeout)
				if err := call(cctx); err != nil {
					errs.add(err)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	return errs, ctx.Err()
}
