package server

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/stage3client/catalog"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// staticCatalogs is a CatalogSource that holds one snapshot.
type staticCatalogs struct{ snap *catalog.Snapshot }

func (s staticCatalogs) Snapshot() *catalog.Snapshot { return s.snap }

// referenceCatalogs holds the reference Stage-3's catalogue, current.
func referenceCatalogs(t testing.TB) staticCatalogs {
	t.Helper()
	cat, err := catalog.Compile(stage3ref.Catalogue())
	require.NoError(t, err)
	now := time.Now()
	return staticCatalogs{&catalog.Snapshot{Status: catalog.StatusCurrent, Catalog: cat, FetchTime: now, AttemptTime: now}}
}

// catalogPlan is a plan the reference Stage-3 runs: text.upper, then
// text.concat with its left fed by a binding.
func catalogPlan() *stage4v1.Plan {
	return &stage4v1.Plan{
		UserId: "alice", TokenHash: "alice-token", TriggerType: "manual",
		Steps: []*stage4v1.Step{
			{Domain: "text", Method: "upper", Parameters: mustStruct(map[string]any{"text": "hi"})},
			{Domain: "text", Method: "concat", Parameters: mustStruct(map[string]any{"right": "!"})},
		},
		DataBindings: []*stage4v1.DataBinding{{SourceStep: 0, SourceOutput: "text", TargetStep: 1, TargetParameter: "left"}},
	}
}

func TestValidatorChecksTheCatalog(t *testing.T) {
	t.Parallel()
	v := NewValidator(referenceCatalogs(t))
	tests := []struct {
		name    string
		mutate  func(p *stage4v1.Plan)
		want    []violation
		message string // of the first violation
	}{
		{name: "a plan the catalogue lists", mutate: func(*stage4v1.Plan) {}},
		{name: "a bound parameter counts as present, whatever its type", mutate: func(p *stage4v1.Plan) {
			p.Steps = append(p.Steps, &stage4v1.Step{Domain: "math", Method: "add", Parameters: mustStruct(map[string]any{"a": 1})})
			p.DataBindings = append(p.DataBindings, &stage4v1.DataBinding{SourceStep: 1, SourceOutput: "text", TargetStep: 2, TargetParameter: "b"})
		}},
		{name: "an unknown domain", mutate: func(p *stage4v1.Plan) { p.Steps[1].Domain = "mail" },
			want:    []violation{{"plan.steps[1].domain", "stage4.catalog.unknown_domain"}},
			message: `plan.steps[1].domain: domain "mail" is not in Stage-3's catalog (domains: json, math, text)`},
		{name: "an unknown method", mutate: func(p *stage4v1.Plan) { p.Steps[0].Method = "uppercase" },
			want:    []violation{{"plan.steps[0].method", "stage4.catalog.unknown_method"}},
			message: `plan.steps[0].method: method "uppercase" is not in domain "text" of Stage-3's catalog (methods: concat, length, lower, upper)`},
		{name: "a missing required parameter", mutate: func(p *stage4v1.Plan) { delete(p.Steps[0].Parameters.Fields, "text") },
			want:    []violation{{"plan.steps[0].parameters", "stage4.catalog.parameters"}},
			message: `plan.steps[0].parameters: text.upper requires parameter "text"`},
		{name: "a wrong type", mutate: func(p *stage4v1.Plan) { p.Steps[1].Parameters.Fields["right"] = structpb.NewNumberValue(1) },
			want:    []violation{{"plan.steps[1].parameters", "stage4.catalog.parameters"}},
			message: `plan.steps[1].parameters: parameter "right" must be string, not number`},
		{name: "a parameter the schema forbids", mutate: func(p *stage4v1.Plan) { p.Steps[0].Parameters.Fields["txt"] = structpb.NewStringValue("x") },
			want:    []violation{{"plan.steps[0].parameters", "stage4.catalog.parameters"}},
			message: `plan.steps[0].parameters: text.upper has no parameter "txt"`},
		{name: "a binding into a parameter the schema forbids", mutate: func(p *stage4v1.Plan) { p.DataBindings[0].TargetParameter = "prefix" },
			want: []violation{
				{"plan.steps[1].parameters", "stage4.catalog.parameters"},
				{"plan.data_bindings[0].target_parameter", "stage4.catalog.bound_parameter"},
			},
			message: `plan.steps[1].parameters: text.concat requires parameter "left" (and 1 more violation)`},
		{name: "catalogue violations come after the others", mutate: func(p *stage4v1.Plan) {
			p.UserId = "not a user id"
			p.Steps[0].Method = "uppercase"
		},
			want: []violation{{"plan.user_id", "string.pattern"}, {"plan.steps[0].method", "stage4.catalog.unknown_method"}}},
		{name: "parameters that break the rules are not held to the schema", mutate: func(p *stage4v1.Plan) {
			p.Steps[0].Parameters.Fields["text"] = structpb.NewNumberValue(math.NaN())
			p.Steps[1].Method = "concatenate"
		},
			want: []violation{{"plan.steps[0].parameters", "stage4.parameters.finite"}, {"plan.steps[1].method", "stage4.catalog.unknown_method"}}},
		{name: "a name that breaks its pattern is not looked up", mutate: func(p *stage4v1.Plan) { p.Steps[0].Method = "Upper" },
			want: []violation{{"plan.steps[0].method", "string.pattern"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := catalogPlan()
			tt.mutate(p)
			req := &stage4v1.ValidatePlanRequest{Plan: p}
			before := proto.CloneOf(req)
			err := v.Validate(req)
			require.True(t, proto.Equal(before, req), "Validate modified the request")
			if len(tt.want) == 0 {
				require.NoError(t, err)
				return
			}
			st, vs := requireInvalid(t, err)
			require.Equal(t, tt.want, summarize(vs))
			if tt.message != "" {
				require.Equal(t, tt.message, st.Message()[:min(len(st.Message()), len(tt.message))])
			}
			require.Equal(t, err.Error(), v.Validate(req).Error(), "the same error every time")
		})
	}
}

// TestValidatorWithoutACatalogIsValidate: no source, a nil Validator and
// a source without a catalogue all leave validation as it was.
func TestValidatorWithoutACatalogIsValidate(t *testing.T) {
	t.Parallel()
	p := catalogPlan()
	p.Steps[0].Method = "uppercase"
	delete(p.Steps[1].Parameters.Fields, "right")
	req := &stage4v1.ExecutePlanRequest{Plan: p}
	require.NoError(t, Validate(req))
	for name, v := range map[string]*Validator{
		"nil":            nil,
		"no source":      NewValidator(nil),
		"not offered":    NewValidator(staticCatalogs{&catalog.Snapshot{Status: catalog.StatusNotOffered}}),
		"none fetched":   NewValidator(staticCatalogs{&catalog.Snapshot{Status: catalog.StatusUnavailable}}),
		"with catalogue": NewValidator(referenceCatalogs(t)),
	} {
		err := v.Validate(req)
		if name == "with catalogue" {
			requireInvalid(t, err)
			continue
		}
		require.NoError(t, err, name)
	}
}

// TestExecutePlanRefusesWhatTheCatalogDoesNotList: with the reference's
// catalogue, ExecutePlan refuses an unknown method and a missing
// parameter as ValidatePlan does, before EXECUTION_STARTED: Stage-3 is not
// called, and the log holds PLAN_RECEIVED and EXECUTION_FAILED{validation}
// naming the rule, as for any invalid plan.
func TestExecutePlanRefusesWhatTheCatalogDoesNotList(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{catalog: true})
	ctx := context.Background()
	tests := []struct {
		name   string
		mutate func(p *stage4v1.Plan)
		want   string
	}{
		{name: "an unknown method", mutate: func(p *stage4v1.Plan) { p.Steps[0].Method = "uppercase" },
			want: "plan.steps.method: stage4.catalog.unknown_method"},
		{name: "a missing parameter", mutate: func(p *stage4v1.Plan) { delete(p.Steps[1].Parameters.Fields, "right") },
			want: "plan.steps.parameters: stage4.catalog.parameters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := catalogPlan()
			tt.mutate(p)
			_, verr := h.client.ValidatePlan(ctx, &stage4v1.ValidatePlanRequest{Plan: p})
			requireStatus(t, verr, codes.InvalidArgument, "PLAN_INVALID")
			_, err := h.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: p})
			requireStatus(t, err, codes.InvalidArgument, "PLAN_INVALID")
			require.Equal(t, verr.Error(), err.Error(), "a dry run and an execution agree")
		})
	}
	require.Zero(t, h.stage3.Calls(), "Stage-3 was never called")
	evs := h.events(t, "")
	require.Equal(t, []stage4v1.AuditEventType{
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED, stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED, stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_FAILED,
	}, eventTypes(evs))
	for i, want := range []string{tests[0].want, tests[1].want} {
		d := evs[2*i+1].GetDetails().GetFields()
		require.Equal(t, "validation", d["phase"].GetStringValue())
		require.Equal(t, want, d["violations"].GetListValue().GetValues()[0].GetStringValue())
	}

	// The catalogue does not stop a plan it lists.
	res, err := h.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: catalogPlan()})
	require.NoError(t, err)
	require.Len(t, res.GetResult().GetResults(), 2)
}

func TestListMethods(t *testing.T) {
	t.Parallel()
	fetched := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	attempted := fetched.Add(time.Minute)
	ref := referenceCatalogs(t).snap.Catalog
	tests := []struct {
		name        string
		validator   *Validator
		wantState   stage4v1.CatalogState
		wantDomains bool
	}{
		{name: "no validator", wantState: stage4v1.CatalogState_CATALOG_STATE_OFF},
		{name: "no source", validator: NewValidator(nil), wantState: stage4v1.CatalogState_CATALOG_STATE_OFF},
		{name: "none fetched", validator: NewValidator(staticCatalogs{&catalog.Snapshot{Status: catalog.StatusUnavailable, AttemptTime: attempted}}),
			wantState: stage4v1.CatalogState_CATALOG_STATE_UNAVAILABLE},
		{name: "not offered", validator: NewValidator(staticCatalogs{&catalog.Snapshot{Status: catalog.StatusNotOffered, AttemptTime: attempted}}),
			wantState: stage4v1.CatalogState_CATALOG_STATE_NOT_OFFERED},
		{name: "current", validator: NewValidator(staticCatalogs{&catalog.Snapshot{Status: catalog.StatusCurrent, Catalog: ref, FetchTime: fetched, AttemptTime: attempted}}),
			wantState: stage4v1.CatalogState_CATALOG_STATE_CURRENT, wantDomains: true},
		{name: "stale", validator: NewValidator(staticCatalogs{&catalog.Snapshot{Status: catalog.StatusStale, Catalog: ref, FetchTime: fetched, AttemptTime: attempted}}),
			wantState: stage4v1.CatalogState_CATALOG_STATE_STALE, wantDomains: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := New(nil, nil, testFingerprinter, WithValidator(tt.validator))
			res, err := s.ListMethods(context.Background(), &stage4v1.ListMethodsRequest{})
			require.NoError(t, err)
			require.Equal(t, tt.wantState, res.GetState())
			if tt.wantDomains {
				require.True(t, proto.Equal(stage3ref.Catalogue(), &stage3v1.DescribeMethodsResponse{Domains: res.GetDomains()}))
				require.Equal(t, fetched, res.GetFetchTime().AsTime())
			} else {
				require.Empty(t, res.GetDomains())
				require.Nil(t, res.GetFetchTime())
			}
			if tt.wantState == stage4v1.CatalogState_CATALOG_STATE_OFF {
				require.Nil(t, res.GetAttemptTime())
			} else {
				require.Equal(t, attempted, res.GetAttemptTime().AsTime())
			}
		})
	}

	t.Run("over gRPC, the reference's catalogue", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, harnessOptions{catalog: true})
		res, err := h.client.ListMethods(context.Background(), &stage4v1.ListMethodsRequest{})
		require.NoError(t, err)
		require.Equal(t, stage4v1.CatalogState_CATALOG_STATE_CURRENT, res.GetState())
		require.True(t, proto.Equal(stage3ref.Catalogue(), &stage3v1.DescribeMethodsResponse{Domains: res.GetDomains()}))
		require.Equal(t, h.catalog.Snapshot().FetchTime.UTC(), res.GetFetchTime().AsTime())
	})
}
