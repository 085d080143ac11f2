package main

import (
	"io"
	"net/http"
	"testing"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// uppercasePlanJSON names text.uppercase, which the reference Stage-3
// does not have; Stage-4's own rules accept it.
const uppercasePlanJSON = `{"user_id":"alice","token_hash":"alice-token","trigger_type":"manual",
 "steps":[{"domain":"text","method":"uppercase","parameters":{"text":"hi"}}]}`

// fieldViolation is a violation as these tests compare it.
type fieldViolation struct{ path, rule string }

// violationsOf returns the field paths and rule ids of a PLAN_INVALID
// error, and checks its code and reason.
func violationsOf(t *testing.T, err error) []fieldViolation {
	t.Helper()
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.Equal(t, rpcerr.PlanInvalid, rpcerr.Reason(err), "%v", err)
	var out []fieldViolation
	for _, d := range status.Convert(err).Details() {
		if vs, ok := d.(*validate.Violations); ok {
			for _, v := range vs.GetViolations() {
				out = append(out, fieldViolation{protovalidate.FieldPathString(v.GetField()), v.GetRuleId()})
			}
		}
	}
	return out
}

// TestCatalogRefusesPlansStage3CannotRun runs serve in front of the
// reference Stage-3, which describes its methods: ValidatePlan and
// ExecutePlan refuse text.uppercase and a step missing a required
// parameter with field paths, and ExecutePlan records them as any invalid
// plan (PLAN_RECEIVED and EXECUTION_FAILED{validation}) without
// EXECUTION_STARTED: Stage-3 is never asked to execute them. ListMethods
// shows the catalogue, and stage4 validate, offline, does not know it.
func TestCatalogRefusesPlansStage3CannotRun(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, nil, nil)
	ctx := testContext(t)

	t.Run("serve fetched the catalogue before serving", func(t *testing.T) {
		fields := gw.stage4.stderr.waitForLog(t, "stage3 catalog fetched; plans are checked against it", nil)
		require.Equal(t, 10.0, fields["methods"])
		require.Equal(t, 3.0, fields["domains"])
	})

	t.Run("ListMethods shows the reference catalogue", func(t *testing.T) {
		res, err := gw.client.ListMethods(ctx, &stage4v1.ListMethodsRequest{})
		require.NoError(t, err)
		require.Equal(t, stage4v1.CatalogState_CATALOG_STATE_CURRENT, res.GetState())
		require.True(t, proto.Equal(stage3ref.Catalogue(), &stage3v1.DescribeMethodsResponse{Domains: res.GetDomains()}), "got %v", res.GetDomains())
		require.NotNil(t, res.GetFetchTime())
	})

	missingRight := testkit.Plan(t)
	delete(missingRight.Steps[1].Parameters.Fields, "right") // text.concat; left is bound
	uppercase := &stage4v1.Plan{}
	require.NoError(t, protojson.Unmarshal([]byte(uppercasePlanJSON), uppercase))
	tests := []struct {
		name string
		plan *stage4v1.Plan
		want []fieldViolation
		// recorded is what EXECUTION_FAILED says, field names and rule
		// ids only.
		recorded string
	}{
		{name: "text.uppercase", plan: uppercase,
			want:     []fieldViolation{{"plan.steps[0].method", "stage4.catalog.unknown_method"}},
			recorded: "plan.steps.method: stage4.catalog.unknown_method"},
		{name: "a missing required parameter", plan: missingRight,
			want:     []fieldViolation{{"plan.steps[1].parameters", "stage4.catalog.parameters"}},
			recorded: "plan.steps.parameters: stage4.catalog.parameters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, verr := gw.client.ValidatePlan(ctx, &stage4v1.ValidatePlanRequest{Plan: tt.plan})
			require.Equal(t, tt.want, violationsOf(t, verr))

			var header metadata.MD
			_, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: tt.plan}, grpc.Header(&header))
			require.Equal(t, tt.want, violationsOf(t, err))
			require.Equal(t, status.Convert(verr).Message(), status.Convert(err).Message(), "the dry run and the execution agree")
			ids := header.Get(testkit.ExecutionIDHeader)
			require.Len(t, ids, 1)

			var events []*stage4v1.AuditEvent
			for _, line := range testkit.LogLines(t, gw.auditLog) {
				ev := &stage4v1.AuditEvent{}
				require.NoError(t, protojson.Unmarshal(line, ev))
				if ev.GetExecutionId() == ids[0] {
					events = append(events, ev)
				}
			}
			require.Len(t, events, 2, "PLAN_RECEIVED and EXECUTION_FAILED, no EXECUTION_STARTED")
			require.Equal(t, stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED, events[0].GetType())
			require.Equal(t, stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED, events[1].GetType())
			details := events[1].GetDetails().GetFields()
			require.Equal(t, "validation", details["phase"].GetStringValue())
			require.Equal(t, tt.recorded, details["violations"].GetListValue().GetValues()[0].GetStringValue())
		})
	}

	t.Run("Stage-3 was asked for its catalogue, never to execute", func(t *testing.T) {
		metrics := scrapeMetrics(t, gw.metricsAddr)
		require.Contains(t, metrics, `grpc_client_handled_total{grpc_code="OK",grpc_method="DescribeMethods",grpc_service="stage3.v1.Stage3Service",grpc_type="unary"} 1`)
		require.NotContains(t, metrics, `grpc_method="ExecuteMultiDomainPlan"`)
		require.Contains(t, metrics, `stage4_stage3_catalog_state{state="current"} 1`)
		require.Contains(t, metrics, `stage4_stage3_catalog_methods 10`)
		require.Contains(t, metrics, `stage4_stage3_catalog_refreshes_total{result="ok"} 1`)
	})

	t.Run("a plan the catalogue lists runs", func(t *testing.T) {
		res, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.NoError(t, err)
		require.Len(t, res.GetResult().GetResults(), 3)
	})

	t.Run("stage4 validate, offline, has no catalogue", func(t *testing.T) {
		code, stdout, stderr := runStage4(t, nil, "validate", writeFile(t, t.TempDir(), "uppercase.json", uppercasePlanJSON))
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
		require.Contains(t, stdout, "OK sha256:")
	})
}

// TestCatalogOffChangesNothing: with --stage3-catalog-interval 0 (here
// through its environment variable) serve never asks Stage-3, and plans
// are validated as before.
func TestCatalogOffChangesNothing(t *testing.T) {
	t.Parallel()
	gw := startGatewayOn(t, t.TempDir()+"/audit", []string{"STAGE4_STAGE3_CATALOG_INTERVAL=0"}, nil, nil)
	ctx := testContext(t)
	res, err := gw.client.ListMethods(ctx, &stage4v1.ListMethodsRequest{})
	require.NoError(t, err)
	require.Equal(t, stage4v1.CatalogState_CATALOG_STATE_OFF, res.GetState())
	require.Empty(t, res.GetDomains())
	uppercase := &stage4v1.Plan{}
	require.NoError(t, protojson.Unmarshal([]byte(uppercasePlanJSON), uppercase))
	_, err = gw.client.ValidatePlan(ctx, &stage4v1.ValidatePlanRequest{Plan: uppercase})
	require.NoError(t, err)
	_, err = gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: uppercase})
	require.Equal(t, codes.NotFound, status.Code(err), "Stage-3 refuses it instead: %v", err)
	require.Equal(t, rpcerr.Stage3Rejected, rpcerr.Reason(err))
	require.NotContains(t, scrapeMetrics(t, gw.metricsAddr), `grpc_method="DescribeMethods"`)
}

func TestCatalogIntervalMustNotBeNegative(t *testing.T) {
	t.Parallel()
	code, _, stderr := runStage4(t, nil, "serve", "--stage3-addr", "127.0.0.1:1", "--stage3-catalog-interval", "-1s")
	require.Equal(t, exitUsage, code)
	require.Contains(t, stderr, "--stage3-catalog-interval must not be negative")
}

// scrapeMetrics returns the /metrics page at addr.
func scrapeMetrics(t *testing.T, addr string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), http.MethodGet, "http://"+addr+"/metrics", nil)
	require.NoError(t, err)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return string(body)
}
