package gateway_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// The helper process: this test binary, started again with helperEnv set,
// runs one gateway (gateway.Run, the composition the binary runs) instead
// of the tests, so that a test can SIGKILL a replica whose audit options
// it chose. The stage4 binary has no flags for the open-for margin; the
// margin of 30 s is what a test cannot wait for.
const (
	helperEnv        = "GATEWAY_TEST_HELPER"         // "1": run the helper
	helperAuditLog   = "GATEWAY_TEST_HELPER_AUDIT"   // Config.AuditLog
	helperReplica    = "GATEWAY_TEST_HELPER_REPLICA" // Config.ReplicaName
	helperStage3     = "GATEWAY_TEST_HELPER_STAGE3"  // Stage-3 address
	helperOpenFor    = "GATEWAY_TEST_HELPER_OPEN_FOR"
	helperReadyTitle = "helper ready at "
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(runHelper())
	}
	os.Exit(m.Run())
}

// runHelper runs the helper's gateway until SIGTERM (or SIGKILL, which is
// the point) and prints its address to stdout once it serves.
func runHelper() int {
	openFor, err := time.ParseDuration(os.Getenv(helperOpenFor))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	cfg := gateway.Config{
		Listen:          "127.0.0.1:0",
		AuditLog:        os.Getenv(helperAuditLog),
		AuditStore:      audit.OpenConfig{ReplicaName: os.Getenv(helperReplica)},
		Stage3:          stage3client.Config{Target: os.Getenv(helperStage3), Insecure: true},
		MaxMessageBytes: stage3client.DefaultMaxMessageBytes,
		ShutdownGrace:   time.Second,
		AuditOptions:    []audit.Option{audit.WithOpenFor(openFor), audit.WithPingInterval(200 * time.Millisecond)},
	}
	err = gateway.Run(ctx, cfg, slog.New(slog.NewJSONHandler(os.Stderr, nil)), func(a gateway.Addrs) {
		fmt.Printf("%s%s\n", helperReadyTitle, a.GRPC)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

// startHelper starts the helper gateway under replica name on url with
// openFor, and returns the process and its gRPC address. It is killed at
// the end of the test if it still runs.
func startHelper(t *testing.T, url, name, stage3Addr string, openFor time.Duration) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperAuditLog+"="+url, helperReplica+"="+name,
		helperStage3+"="+stage3Addr, helperOpenFor+"="+openFor.String())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("helper stderr:\n%s", stderr.String())
		}
	})
	addr := make(chan string, 1)
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), helperReadyTitle); ok {
				addr <- a
			}
		}
		close(addr)
		_ = cmd.Wait()
	}()
	select {
	case a, ok := <-addr:
		require.True(t, ok, "helper exited before it was ready")
		return cmd, a
	case <-time.After(waitTimeout):
		t.Fatal("helper not ready in time")
		return nil, ""
	}
}

// TestKilledReplicaClosedByOthers kills a replica (SIGKILL) while two
// plans hang in Stage-3, a replica that never comes back. Two other live
// replicas, under other names, sweep for interrupted executions several
// times a second: neither may close an execution before its deadline
// (OpenUntil) and the grace period have passed, and once they have, each
// execution gets exactly one EXECUTION_FAILED of phase "interrupted",
// from one of them.
func TestKilledReplicaClosedByOthers(t *testing.T) {
	t.Parallel()
	const (
		openFor  = 2 * time.Second // the killed replica's deadline plus margin
		grace    = 1 * time.Second // the live replicas' grace period
		inFlight = 2
	)
	url := pgtest.NewDatabase(t)
	svc := stage3ref.NewService()
	svc.SetFault(stage3ref.Fault{Hang: true})
	ref, err := stage3ref.NewServer(svc)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ref.Close() })

	helper, addr := startHelper(t, url, "doomed", ref.Addr, openFor)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ctx := testContext(t)
	var ids []string
	for range inFlight {
		_, id := testkit.StartExecutePlan(ctx, t, conn, testkit.Plan(t))
		ids = append(ids, id)
	}
	select {
	case <-svc.Received(inFlight): // in Stage-3: EXECUTION_STARTED is durable
	case <-ctx.Done():
		t.Fatal("plans did not reach Stage-3")
	}
	require.NoError(t, helper.Process.Signal(syscall.SIGKILL))

	var survivors []*runningGateway
	var clients []stage4v1.Stage4ServiceClient
	for _, name := range []string{"survivor-1", "survivor-2"} {
		cfg := pgConfig(url, name, startReference(t))
		cfg.AuditOptions = []audit.Option{audit.WithPingInterval(100 * time.Millisecond), audit.WithSweepInterval(100 * time.Millisecond)}
		// Opened here, to shorten the grace period as no operator can.
		store, err := pgstore.Open(testContext(t), url, pgstore.WithReplicaName(name), pgstore.WithGracePeriod(grace))
		require.NoError(t, err)
		cfg.Store = store
		gw := startGateway(t, cfg)
		survivors = append(survivors, gw)
		clients = append(clients, stage4v1.NewStage4ServiceClient(dialGateway(t, gw)))
	}

	// Poll, with a deadline, until both executions are closed.
	deadline := time.Now().Add(15 * time.Second)
	var events []*stage4v1.AuditEvent
	for {
		events = listEvents(t, clients[0], &stage4v1.ListAuditEventsRequest{})
		if len(events) >= 3*inFlight {
			break
		}
		require.True(t, time.Now().Before(deadline), "executions not closed in time: %d events", len(events))
		time.Sleep(50 * time.Millisecond) // polling another process's sweep, with a deadline
	}
	require.Len(t, events, 3*inFlight, "exactly one terminal event per execution")

	perExecution := map[string][]*stage4v1.AuditEvent{}
	for _, ev := range events {
		perExecution[ev.GetExecutionId()] = append(perExecution[ev.GetExecutionId()], ev)
	}
	require.Len(t, perExecution, inFlight)
	for _, id := range ids {
		evs := perExecution[id]
		require.Equal(t, []stage4v1.AuditEventType{planReceived, executionStarted, executionFailed}, types(evs), "execution %s", id)
		require.Equal(t, audit.PhaseInterrupted, evs[2].GetDetails().GetFields()["phase"].GetStringValue())
		// The log's own clock shows the wait: not before the deadline of
		// EXECUTION_STARTED and the grace period.
		waited := evs[2].GetTime().AsTime().Sub(evs[1].GetTime().AsTime())
		require.GreaterOrEqual(t, waited, openFor+grace, "execution %s closed too early", id)
		t.Logf("execution %s closed %v after EXECUTION_STARTED", id, waited.Round(time.Millisecond))
	}
	// Stopped, neither survivor can be in the middle of a sweep: a second
	// close of any execution would be in the log now.
	for _, gw := range survivors {
		require.NoError(t, gw.stop())
	}
	res, err := pgstore.Verify(testContext(t), url)
	require.NoError(t, err)
	require.Equal(t, uint64(3*inFlight), res.Records)
}
