package gateway_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/server"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// Event types of one execution, in the order the log writes them.
const (
	planReceived       = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED
	executionStarted   = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED
	executionCompleted = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED
	executionFailed    = stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED
)

// healthServices are the names health answers for: overall and the service.
var healthServices = []string{"", stage4v1.Stage4Service_ServiceDesc.ServiceName}

// startReference runs the reference Stage-3 in this process on loopback.
func startReference(t *testing.T) *stage3ref.Server {
	t.Helper()
	ref, err := stage3ref.NewServer(stage3ref.NewService())
	require.NoError(t, err)
	t.Cleanup(func() { _ = ref.Close() })
	return ref
}

// pgConfig is a gateway on the database at url under replica name, in
// front of ref.
func pgConfig(url, name string, ref *stage3ref.Server) gateway.Config {
	return gateway.Config{
		AuditLog:   url,
		AuditStore: audit.OpenConfig{ReplicaName: name},
		Stage3:     stage3client.Config{Target: ref.Addr, Insecure: true},
	}
}

// dialGateway connects a plaintext client to a running gateway.
func dialGateway(t *testing.T, g *runningGateway) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(g.addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// listEvents lists every event that req matches through one replica,
// following page tokens.
func listEvents(t *testing.T, c stage4v1.Stage4ServiceClient, req *stage4v1.ListAuditEventsRequest) []*stage4v1.AuditEvent {
	t.Helper()
	req = proto.CloneOf(req)
	req.PageSize = 1000
	var all []*stage4v1.AuditEvent
	for {
		res, err := c.ListAuditEvents(testContext(t), req)
		require.NoError(t, err)
		all = append(all, res.GetAuditEvents()...)
		if res.GetNextPageToken() == "" {
			return all
		}
		req.PageToken = res.GetNextPageToken()
	}
}

// types returns the event types of evs, in order.
func types(evs []*stage4v1.AuditEvent) []stage4v1.AuditEventType {
	out := make([]stage4v1.AuditEventType, len(evs))
	for i, ev := range evs {
		out[i] = ev.GetType()
	}
	return out
}

// waitHealth polls health on conn, for the overall status and the
// service's, until both are want, and returns how long that took. Health
// changes on the gateway's own schedule (a ping of the store about once a
// second), so a poll with a deadline is the way to observe it.
func waitHealth(t *testing.T, conn *grpc.ClientConn, want healthpb.HealthCheckResponse_ServingStatus, within time.Duration) time.Duration {
	t.Helper()
	hc := healthpb.NewHealthClient(conn)
	began := time.Now()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got := map[string]healthpb.HealthCheckResponse_ServingStatus{}
		for _, svc := range healthServices {
			res, err := hc.Check(testContext(t), &healthpb.HealthCheckRequest{Service: svc})
			require.NoError(t, err, "health check %q", svc)
			got[svc] = res.GetStatus()
		}
		if got[healthServices[0]] == want && got[healthServices[1]] == want {
			return time.Since(began)
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("health not %v within %v: %v", want, within, got)
		}
	}
}

// TestReplicasShareOneLog runs two and three gateways, each with its own
// replica name, on one PostgreSQL database and one reference Stage-3, and
// sends 50 concurrent ExecutePlan calls to each at once through real gRPC
// clients. Every call must succeed and the replicas must have written one
// log: it verifies, its sequences run from 1 without a gap, every
// execution has exactly its three events in order, every execution id
// that a caller got is in it once, and every replica lists the same log,
// including the executions that the others ran.
func TestReplicasShareOneLog(t *testing.T) {
	t.Parallel()
	const callsPerReplica = 50
	tests := []struct {
		name     string
		replicas int
	}{
		{name: "two replicas", replicas: 2},
		{name: "three replicas", replicas: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			url := pgtest.NewDatabase(t)
			ref := startReference(t)
			clients := make([]stage4v1.Stage4ServiceClient, tt.replicas)
			for i := range clients {
				gw := startGateway(t, pgConfig(url, fmt.Sprint("replica-", i), ref))
				clients[i] = stage4v1.NewStage4ServiceClient(dialGateway(t, gw))
			}

			// executedBy maps each execution id a caller got to the
			// replica that ran it.
			executedBy := map[string]int{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			start := make(chan struct{})
			errs := make(chan error, tt.replicas*callsPerReplica)
			ctx := testContext(t)
			for r, c := range clients {
				for range callsPerReplica {
					wg.Go(func() {
						<-start
						res, err := c.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
						if err == nil && len(res.GetResult().GetResults()) != 3 {
							err = fmt.Errorf("replica %d: %d step results, want 3", r, len(res.GetResult().GetResults()))
						}
						if err != nil {
							errs <- err
							return
						}
						mu.Lock()
						defer mu.Unlock()
						if prev, dup := executedBy[res.GetExecutionId()]; dup {
							errs <- fmt.Errorf("execution id %s returned by replicas %d and %d", res.GetExecutionId(), prev, r)
						}
						executedBy[res.GetExecutionId()] = r
					})
				}
			}
			close(start) // all callers at once, so that the replicas' appends contend
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			total := tt.replicas * callsPerReplica
			require.Len(t, executedBy, total)
			require.Equal(t, total, ref.Service.Calls(), "one Stage-3 call per execution")

			// One chain, gapless, its head at its end: the verifier's view.
			res, err := pgstore.Verify(testContext(t), url)
			require.NoError(t, err)
			require.Equal(t, uint64(3*total), res.Records)

			all := listEvents(t, clients[0], &stage4v1.ListAuditEventsRequest{})
			require.Len(t, all, 3*total)
			perExecution := map[string][]*stage4v1.AuditEvent{}
			for i, ev := range all {
				require.Equal(t, uint64(i+1), ev.GetSequence(), "sequences run from 1 without a gap")
				perExecution[ev.GetExecutionId()] = append(perExecution[ev.GetExecutionId()], ev)
			}
			require.Len(t, perExecution, total, "no execution in the log that no caller got")
			for id := range executedBy {
				require.Equal(t, []stage4v1.AuditEventType{planReceived, executionStarted, executionCompleted},
					types(perExecution[id]), "execution %s", id)
			}

			// Every replica lists the same log, and finds by id an
			// execution that another replica ran.
			for r, c := range clients {
				other := -1
				for id, by := range executedBy {
					if by != r {
						got := listEvents(t, c, &stage4v1.ListAuditEventsRequest{ExecutionId: id})
						require.Len(t, got, 3, "replica %d lists execution %s of replica %d", r, id, by)
						for i := range got {
							require.True(t, proto.Equal(perExecution[id][i], got[i]), "replica %d, execution %s", r, id)
						}
						other = by
						break
					}
				}
				require.NotEqual(t, -1, other)
				if r == 0 {
					continue
				}
				mine := listEvents(t, c, &stage4v1.ListAuditEventsRequest{})
				require.Len(t, mine, len(all))
				for i := range all {
					require.True(t, proto.Equal(all[i], mine[i]), "replica %d, sequence %d", r, i+1)
				}
			}
		})
	}
}

// TestDatabaseOutage stops a throwaway PostgreSQL cluster under a running
// gateway and starts it again. While the database is down, health turns
// NOT_SERVING within a few seconds, by the log's pings alone (before the
// call then in Stage-3 has ended); that call cannot record its terminal
// event and fails with UNKNOWN, OUTCOME_UNKNOWN (the plan may have run);
// and ExecutePlan fails closed (UNAVAILABLE, AUDIT_UNAVAILABLE) without calling
// Stage-3. Once it is back, health returns to SERVING and plans execute
// again, without restarting the gateway, and the log verifies.
func TestDatabaseOutage(t *testing.T) {
	t.Parallel()
	// The deadline ends the call that hangs in Stage-3: long enough for
	// health to notice the outage first.
	const stage3Deadline = 5 * time.Second
	cluster := pgtest.StartCluster(t)
	url := pgtest.NewDatabaseOn(t, cluster.URL())
	ref := startReference(t)
	cfg := pgConfig(url, "replica-0", ref)
	cfg.Stage3.MaxDeadline = stage3Deadline
	gw := startGateway(t, cfg)
	conn := dialGateway(t, gw)
	client := stage4v1.NewStage4ServiceClient(conn)
	ctx := testContext(t)

	_, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)
	waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING, 5*time.Second)

	// A call in Stage-3 (which hangs until the deadline) when the
	// database stops.
	ref.Service.SetFault(stage3ref.Fault{Hang: true})
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, stage4v1.Stage4Service_ExecutePlan_FullMethodName)
	require.NoError(t, err)
	require.NoError(t, stream.SendMsg(&stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)}))
	require.NoError(t, stream.CloseSend())
	header, err := stream.Header()
	require.NoError(t, err)
	require.Len(t, header.Get(server.HeaderExecutionID), 1)
	inFlight := header.Get(server.HeaderExecutionID)[0]
	began := time.Now()
	<-ref.Service.Received(2) // EXECUTION_STARTED is durable

	ended := make(chan error, 1)
	go func() { ended <- stream.RecvMsg(&stage4v1.ExecutePlanResponse{}) }()

	cluster.Stop()
	// No call is needed for health to notice: the log pings the store
	// about once a second.
	took := waitHealth(t, conn, healthpb.HealthCheckResponse_NOT_SERVING, 5*time.Second)
	t.Logf("health NOT_SERVING %v after the database stopped", took)
	select {
	case err := <-ended:
		t.Fatalf("the call in Stage-3 ended (%v) before health turned NOT_SERVING %v after it began", err, time.Since(began))
	default: // health noticed by itself
	}
	err = <-ended
	require.Equal(t, codes.Unknown, status.Code(err), "%v", err)
	require.Equal(t, rpcerr.OutcomeUnknown, rpcerr.Reason(err))
	ref.Service.SetFault(stage3ref.Fault{})
	callsBefore := ref.Service.Calls()

	for range 2 {
		_, err = client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		require.Equal(t, rpcerr.AuditUnavailable, rpcerr.Reason(err))
	}
	require.Equal(t, callsBefore, ref.Service.Calls(), "nothing unaudited reaches Stage-3")

	cluster.Start()
	took = waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING, 10*time.Second)
	t.Logf("health SERVING %v after the database started", took)
	res, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)
	require.Equal(t, callsBefore+1, ref.Service.Calls())

	// The refused calls left nothing; the call that was with Stage-3 got
	// its terminal event once the database was back, before the new call
	// was taken: Stage-3's deadline, and what the caller was told.
	vr, err := pgstore.Verify(testContext(t), url)
	require.NoError(t, err)
	require.Equal(t, uint64(3+3+3), vr.Records)
	require.Equal(t, []stage4v1.AuditEventType{planReceived, executionStarted, executionCompleted},
		types(listEvents(t, client, &stage4v1.ListAuditEventsRequest{ExecutionId: res.GetExecutionId()})))
	late := listEvents(t, client, &stage4v1.ListAuditEventsRequest{ExecutionId: inFlight})
	require.Equal(t, []stage4v1.AuditEventType{planReceived, executionStarted, executionFailed}, types(late))
	d := late[2].GetDetails().GetFields()
	require.True(t, d["recorded_late"].GetBoolValue())
	require.Equal(t, "OUTCOME_UNKNOWN", d["caller_told"].GetStringValue())
	require.Equal(t, audit.PhaseStage3, d["phase"].GetStringValue())
	require.Equal(t, uint64(6), late[2].GetSequence(), "written before the call after the outage")
}

// TestConcurrentFirstStart starts three gateways at the same moment on an
// empty database: they race to create the schema, and all must come up
// SERVING on one log.
func TestConcurrentFirstStart(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	ref := startReference(t)
	const n = 3
	type started struct {
		addrs gateway.Addrs
		err   error
	}
	results := make(chan started, n)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	begin := make(chan struct{})
	for i := range n {
		cfg := pgConfig(url, fmt.Sprint("replica-", i), ref)
		cfg.Listen = "127.0.0.1:0"
		cfg.MaxMessageBytes = stage3client.DefaultMaxMessageBytes
		cfg.ShutdownGrace = 5 * time.Second
		wg.Go(func() {
			<-begin
			ready := false
			err := gateway.Run(ctx, cfg, slog.New(slog.DiscardHandler), func(a gateway.Addrs) {
				ready = true
				results <- started{addrs: a}
			})
			if !ready {
				results <- started{err: fmt.Errorf("replica %d ended before it was ready: %w", i, err)}
			}
		})
	}
	close(begin)
	for range n {
		var s started
		select {
		case s = <-results:
		case <-time.After(waitTimeout):
			t.Fatal("gateways not ready in time")
		}
		require.NoError(t, s.err)
		conn, err := grpc.NewClient(s.addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING, 5*time.Second)
		_, err = stage4v1.NewStage4ServiceClient(conn).ExecutePlan(testContext(t), &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.NoError(t, err)
	}
	res, err := pgstore.Verify(testContext(t), url)
	require.NoError(t, err)
	require.Equal(t, uint64(3*n), res.Records)
}
