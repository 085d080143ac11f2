package gateway_test

import (
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/stage4/stage4/audit/filestore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// failingSync is an audit file whose Sync fails once fail is set, as a disk
// that stopped accepting writes would.
type failingSync struct {
	filestore.File
	fail atomic.Bool
}

func (f *failingSync) Sync() error {
	if f.fail.Load() {
		return errors.New("injected sync failure")
	}
	return f.File.Sync()
}

// TestGatewayAuditFailureTurnsHealthNotServing checks the wiring that the
// binary cannot show from outside: when the audit log fails, the plan is
// refused and health reports NOT_SERVING, overall and for the service.
func TestGatewayAuditFailureTurnsHealthNotServing(t *testing.T) {
	t.Parallel()
	ref, err := stage3ref.NewServer(stage3ref.NewService())
	require.NoError(t, err)
	t.Cleanup(func() { _ = ref.Close() })

	var file *failingSync
	store, err := filestore.Open(filepath.Join(t.TempDir(), "audit.jsonl"), filestore.WithFileWrapper(func(f filestore.File) filestore.File {
		file = &failingSync{File: f}
		return file
	}))
	require.NoError(t, err)
	gw := startGateway(t, gateway.Config{Stage3: stage3client.Config{Target: ref.Addr, Insecure: true}, Store: store})
	addrs := gw.addrs

	conn, err := grpc.NewClient(addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	callCtx := testContext(t)
	res, err := hc.Check(callCtx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, res.GetStatus())

	file.fail.Store(true)
	_, err = stage4v1.NewStage4ServiceClient(conn).ExecutePlan(callCtx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.Error(t, err)
	require.Zero(t, ref.Service.Calls(), "nothing unaudited reaches Stage-3")
	for _, svc := range []string{"", "stage4.v1.Stage4Service"} {
		res, err := hc.Check(callCtx, &healthpb.HealthCheckRequest{Service: svc})
		require.NoError(t, err)
		require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, res.GetStatus(), "service %q", svc)
	}

	gw.stop() // the failed log may make shutdown report an error; the status is what matters here
}
