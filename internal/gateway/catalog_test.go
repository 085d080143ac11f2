package gateway_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// TestGatewayWiresTheCatalog checks that one validator with Stage-3's
// catalogue reaches ValidatePlan, the audit interceptor's ExecutePlan and
// ListMethods, and that its state shows in the metrics; and that without
// a catalogue (off, or a Stage-3 that does not offer one) nothing changes.
func TestGatewayWiresTheCatalog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		interval  time.Duration
		describe  bool
		wantState stage4v1.CatalogState
		metric    string // a line /metrics must have; "" for none
	}{
		{name: "on", interval: time.Minute, describe: true, wantState: stage4v1.CatalogState_CATALOG_STATE_CURRENT,
			metric: `stage4_stage3_catalog_state{state="current"} 1`},
		{name: "off", interval: 0, describe: true, wantState: stage4v1.CatalogState_CATALOG_STATE_OFF},
		{name: "not offered", interval: time.Minute, describe: false, wantState: stage4v1.CatalogState_CATALOG_STATE_NOT_OFFERED,
			metric: `stage4_stage3_catalog_state{state="not_offered"} 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc := stage3ref.NewService()
			gw := startGateway(t, gateway.Config{
				MetricsListen:         "127.0.0.1:0",
				Stage3:                stage3client.Config{Target: serveStage3(t, svc, tt.describe), Insecure: true},
				Stage3CatalogInterval: tt.interval,
			})
			conn, err := grpc.NewClient(gw.addrs.GRPC.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			require.NoError(t, err)
			t.Cleanup(func() { conn.Close() })
			client := stage4v1.NewStage4ServiceClient(conn)
			ctx := testContext(t)

			res, err := client.ListMethods(ctx, &stage4v1.ListMethodsRequest{})
			require.NoError(t, err)
			require.Equal(t, tt.wantState, res.GetState())
			require.Equal(t, tt.wantState == stage4v1.CatalogState_CATALOG_STATE_CURRENT, len(res.GetDomains()) == 3)

			params, err := structpb.NewStruct(map[string]any{"text": "hi"})
			require.NoError(t, err)
			plan := &stage4v1.Plan{UserId: "alice", TokenHash: "alice-token", TriggerType: "manual",
				Steps: []*stage4v1.Step{{Domain: "text", Method: "uppercase", Parameters: params}}}
			_, verr := client.ValidatePlan(ctx, &stage4v1.ValidatePlanRequest{Plan: plan})
			_, eerr := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: plan})
			if tt.wantState == stage4v1.CatalogState_CATALOG_STATE_CURRENT {
				require.Equal(t, codes.InvalidArgument, status.Code(verr), "ValidatePlan: %v", verr)
				require.Equal(t, codes.InvalidArgument, status.Code(eerr), "ExecutePlan: %v", eerr)
				require.Contains(t, eerr.Error(), `plan.steps[0].method: method "uppercase" is not in domain "text"`)
				require.Zero(t, svc.Calls())
			} else {
				require.NoError(t, verr)
				require.Equal(t, codes.NotFound, status.Code(eerr), "Stage-3 refuses it: %v", eerr)
				require.Equal(t, 1, svc.Calls())
			}

			metrics := scrape(t, gw)
			if tt.metric != "" {
				require.Contains(t, metrics, tt.metric)
			} else {
				require.NotContains(t, metrics, "stage4_stage3_catalog_")
			}
		})
	}
}

// serveStage3 serves svc on loopback, as a Stage-3 with DescribeMethods or,
// without describe, as one built before it existed, and returns its
// address.
func serveStage3(t *testing.T, svc *stage3ref.Service, describe bool) string {
	t.Helper()
	if describe {
		ref, err := stage3ref.NewServer(svc)
		require.NoError(t, err)
		t.Cleanup(func() { _ = ref.Close() })
		return ref.Addr
	}
	desc := stage3v1.Stage3Service_ServiceDesc
	desc.Methods = nil
	for _, m := range stage3v1.Stage3Service_ServiceDesc.Methods {
		if m.MethodName != "DescribeMethods" {
			desc.Methods = append(desc.Methods, m)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	srv.RegisterService(&desc, svc)
	go func() { _ = srv.Serve(lis) }() // Stop ends it.
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// scrape returns the gateway's /metrics page.
func scrape(t *testing.T, gw *runningGateway) string {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), http.MethodGet, "http://"+gw.addrs.Metrics.String()+"/metrics", nil)
	require.NoError(t, err)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return strings.ReplaceAll(string(b), "\r", "")
}
