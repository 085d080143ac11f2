package server

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// validPlan returns a valid n-step plan with nested parameters and a binding
// into every odd step (n/2 bindings), each feeding the unset parameter
// "input" from the step before.
func validPlan(n int) *stage4v1.Plan {
	methods := []string{"upper", "lower", "reverse", "trim"}
	steps := make([]*stage4v1.Step, n)
	for i := range steps {
		steps[i] = &stage4v1.Step{
			Domain: "text",
			Method: methods[i%len(methods)],
			Parameters: mustStruct(map[string]any{
				"text": fmt.Sprintf("input of step %d", i),
				"options": map[string]any{
					"locale": "en-GB",
					"repeat": 2,
					"strict": true,
					"tags":   []any{"a", "b", nil},
				},
			}),
		}
	}
	var bindings []*stage4v1.DataBinding
	for target := 1; target < n; target += 2 {
		bindings = append(bindings, &stage4v1.DataBinding{
			SourceStep:      uint32(target - 1),
			SourceOutput:    "text",
			TargetStep:      uint32(target),
			TargetParameter: "input",
		})
	}
	return &stage4v1.Plan{
		UserId:       "alice@example.com",
		TokenHash:    "sha256:9f86d081884c7d659a2feaa0c55ad015",
		TriggerType:  "manual",
		Steps:        steps,
		DataBindings: bindings,
	}
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}

// violation is what the tests assert on: a field path and a rule id.
type violation struct {
	path string
	rule string
}

// requireInvalid asserts that err is PLAN_INVALID and returns its status
// and violations.
func requireInvalid(t *testing.T, err error) (*status.Status, []*validate.Violation) {
	t.Helper()
	require.Error(t, err)
	st, ok := status.FromError(err)
	require.True(t, ok, "not a status error: %v", err)
	require.Equal(t, codes.InvalidArgument, st.Code(), st.Message())
	var info *errdetails.ErrorInfo
	var vs *validate.Violations
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *validate.Violations:
			vs = d
		}
	}
	require.NotNil(t, info, "no ErrorInfo")
	require.Equal(t, "stage4", info.GetDomain())
	require.Equal(t, "PLAN_INVALID", info.GetReason())
	require.NotNil(t, vs, "no Violations")
	require.NotEmpty(t, vs.GetViolations())
	return st, vs.GetViolations()
}

func summarize(vs []*validate.Violation) []violation {
	out := make([]violation, len(vs))
	for i, v := range vs {
		out[i] = violation{protovalidate.FieldPathString(v.GetField()), v.GetRuleId()}
	}
	return out
}

// planCase is a change to validPlan(3) and the violations it must cause,
// none for a valid plan. where, when set, must appear in the first
// violation's message: the JSON pointer of a value inside parameters.
type planCase struct {
	name   string
	mutate func(p *stage4v1.Plan)
	want   []violation
	where  string
}

func runPlanCases(t *testing.T, cases []planCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := validPlan(3)
			tc.mutate(p)
			err := Validate(&stage4v1.ExecutePlanRequest{Plan: p})
			if len(tc.want) == 0 {
				require.NoError(t, err)
				return
			}
			_, vs := requireInvalid(t, err)
			require.Equal(t, tc.want, summarize(vs))
			require.Contains(t, vs[0].GetMessage(), tc.where)
		})
	}
}

func TestValidateRequiredFields(t *testing.T) {
	t.Parallel()
	runPlanCases(t, []planCase{
		{name: "valid", mutate: func(*stage4v1.Plan) {}},
		{
			name:   "no user_id",
			mutate: func(p *stage4v1.Plan) { p.UserId = "" },
			want:   []violation{{"plan.user_id", "required"}},
		},
		{
			name:   "no token_hash",
			mutate: func(p *stage4v1.Plan) { p.TokenHash = "" },
			want:   []violation{{"plan.token_hash", "required"}},
		},
		{
			name:   "no trigger_type",
			mutate: func(p *stage4v1.Plan) { p.TriggerType = "" },
			want:   []violation{{"plan.trigger_type", "required"}},
		},
		{
			name: "no steps",
			mutate: func(p *stage4v1.Plan) {
				p.Steps, p.DataBindings = nil, nil
			},
			want: []violation{{"plan.steps", "repeated.min_items"}},
		},
	})

	for _, tc := range []struct {
		name string
		req  PlanRequest
	}{
		{name: "no plan", req: &stage4v1.ExecutePlanRequest{}},
		{name: "nil request pointer", req: (*stage4v1.ExecutePlanRequest)(nil)},
		{name: "no plan in ValidatePlanRequest", req: &stage4v1.ValidatePlanRequest{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, vs := requireInvalid(t, Validate(tc.req))
			require.Equal(t, []violation{{"plan", "required"}}, summarize(vs))
		})
	}
}

func TestValidateTypesAndPatterns(t *testing.T) {
	t.Parallel()
	runPlanCases(t, []planCase{
		{
			name:   "parameters missing, so not an object",
			mutate: func(p *stage4v1.Plan) { p.Steps[2].Parameters = nil },
			want:   []violation{{"plan.steps[2].parameters", "required"}},
		},
		{
			name:   "user_id with a space",
			mutate: func(p *stage4v1.Plan) { p.UserId = "alice smith" },
			want:   []violation{{"plan.user_id", "string.pattern"}},
		},
		{
			name:   "user_id starting with a dot",
			mutate: func(p *stage4v1.Plan) { p.UserId = ".alice" },
			want:   []violation{{"plan.user_id", "string.pattern"}},
		},
		{
			name:   "user_id of 128 characters",
			mutate: func(p *stage4v1.Plan) { p.UserId = strings.Repeat("u", 128) },
		},
		{
			name:   "user_id of 129 characters",
			mutate: func(p *stage4v1.Plan) { p.UserId = strings.Repeat("u", 129) },
			want:   []violation{{"plan.user_id", "string.max_len"}},
		},
		{
			name:   "token_hash with a space",
			mutate: func(p *stage4v1.Plan) { p.TokenHash = "abc def" },
			want:   []violation{{"plan.token_hash", "string.pattern"}},
		},
		{
			name:   "token_hash of 257 characters",
			mutate: func(p *stage4v1.Plan) { p.TokenHash = strings.Repeat("t", 257) },
			want:   []violation{{"plan.token_hash", "string.max_len"}},
		},
		{
			name:   "trigger_type in upper case",
			mutate: func(p *stage4v1.Plan) { p.TriggerType = "Manual" },
			want:   []violation{{"plan.trigger_type", "string.pattern"}},
		},
		{
			name:   "trigger_type with an underscore",
			mutate: func(p *stage4v1.Plan) { p.TriggerType = "cron_job" },
		},
	})

	t.Run("parameters sent as a JSON string on the wire", func(t *testing.T) {
		t.Parallel()
		// Step{domain, method, parameters: Value{string_value: "x"}}: the
		// bytes of a Value where a Struct belongs parse as a Struct with an
		// unknown field 3.
		value, err := proto.Marshal(structpb.NewStringValue("x"))
		require.NoError(t, err)
		var step []byte
		step = protowire.AppendTag(step, 1, protowire.BytesType)
		step = protowire.AppendString(step, "text")
		step = protowire.AppendTag(step, 2, protowire.BytesType)
		step = protowire.AppendString(step, "upper")
		step = protowire.AppendTag(step, 3, protowire.BytesType)
		step = protowire.AppendBytes(step, value)
		p := validPlan(1)
		p.Steps[0] = &stage4v1.Step{}
		require.NoError(t, proto.Unmarshal(step, p.Steps[0]))

		_, vs := requireInvalid(t, Validate(&stage4v1.ExecutePlanRequest{Plan: p}))
		require.Equal(t, []violation{{"plan.steps[0].parameters", ruleUnknownFields}}, summarize(vs))
	})
}

// addUnknownOnWire appends field 999 to m's wire encoding and decodes m from
// those bytes again, so that m carries an unknown field exactly as it would
// had it arrived over gRPC.
func addUnknownOnWire(t *testing.T, m proto.Message) {
	t.Helper()
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	b = protowire.AppendTag(b, 999, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	proto.Reset(m)
	require.NoError(t, proto.Unmarshal(b, m))
}

func TestValidateUnknownFields(t *testing.T) {
	t.Parallel()
	params := func(p *stage4v1.Plan, step int) map[string]*structpb.Value {
		return p.GetSteps()[step].GetParameters().GetFields()
	}
	options := func(p *stage4v1.Plan) *structpb.Struct { return params(p, 0)["options"].GetStructValue() }
	tags := func(p *stage4v1.Plan) *structpb.ListValue { return options(p).GetFields()["tags"].GetListValue() }
	for _, tc := range []struct {
		name string
		// target picks the message of the request that gets the unknown field.
		target func(req *stage4v1.ExecutePlanRequest) proto.Message
		want   violation
		where  string
	}{
		{
			name:   "request",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message { return req },
			want:   violation{"", ruleUnknownFields},
		},
		{
			name:   "plan",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message { return req.GetPlan() },
			want:   violation{"plan", ruleUnknownFields},
		},
		{
			name:   "step",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message { return req.GetPlan().GetSteps()[1] },
			want:   violation{"plan.steps[1]", ruleUnknownFields},
		},
		{
			name:   "data binding",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message { return req.GetPlan().GetDataBindings()[0] },
			want:   violation{"plan.data_bindings[0]", ruleUnknownFields},
		},
		{
			name: "parameters Struct",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message {
				return req.GetPlan().GetSteps()[2].GetParameters()
			},
			want:  violation{"plan.steps[2].parameters", ruleUnknownFields},
			where: "(top level)",
		},
		{
			name:   "Value",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message { return params(req.GetPlan(), 0)["text"] },
			want:   violation{"plan.steps[0].parameters", ruleUnknownFields},
			where:  "/text",
		},
		{
			name:   "nested Struct",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message { return options(req.GetPlan()) },
			want:   violation{"plan.steps[0].parameters", ruleUnknownFields},
			where:  "/options",
		},
		{
			name: "Value in a nested Struct",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message {
				return options(req.GetPlan()).GetFields()["locale"]
			},
			want:  violation{"plan.steps[0].parameters", ruleUnknownFields},
			where: "/options/locale",
		},
		{
			name:   "ListValue",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message { return tags(req.GetPlan()) },
			want:   violation{"plan.steps[0].parameters", ruleUnknownFields},
			where:  "/options/tags",
		},
		{
			name:   "Value in a ListValue",
			target: func(req *stage4v1.ExecutePlanRequest) proto.Message { return tags(req.GetPlan()).GetValues()[2] },
			want:   violation{"plan.steps[0].parameters", ruleUnknownFields},
			where:  "/options/tags/2",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := &stage4v1.ExecutePlanRequest{Plan: validPlan(3)}
			addUnknownOnWire(t, tc.target(req))
			// Decode the whole request from the wire too, as gRPC would.
			b, err := proto.Marshal(req)
			require.NoError(t, err)
			got := &stage4v1.ExecutePlanRequest{}
			require.NoError(t, proto.Unmarshal(b, got))

			_, vs := requireInvalid(t, Validate(got))
			require.Equal(t, []violation{tc.want}, summarize(vs))
			require.Contains(t, vs[0].GetMessage(), tc.where)
		})
	}

	t.Run("known field number with the wrong wire type", func(t *testing.T) {
		t.Parallel()
		b, err := proto.Marshal(&stage4v1.ExecutePlanRequest{Plan: validPlan(1)})
		require.NoError(t, err)
		// A second plan field as a varint: proto keeps it as unknown.
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, 7)
		req := &stage4v1.ExecutePlanRequest{}
		require.NoError(t, proto.Unmarshal(b, req))

		_, vs := requireInvalid(t, Validate(req))
		require.Equal(t, []violation{{"", ruleUnknownFields}}, summarize(vs))
	})
}

func TestValidateSteps(t *testing.T) {
	t.Parallel()
	withSteps := func(n int) func(p *stage4v1.Plan) {
		return func(p *stage4v1.Plan) {
			proto.Reset(p)
			proto.Merge(p, validPlan(n))
		}
	}
	runPlanCases(t, []planCase{
		{
			name:   "zero steps",
			mutate: func(p *stage4v1.Plan) { p.Steps, p.DataBindings = []*stage4v1.Step{}, nil },
			want:   []violation{{"plan.steps", "repeated.min_items"}},
		},
		{name: "one step", mutate: withSteps(1)},
		{name: "256 steps", mutate: withSteps(256)},
		{
			name:   "257 steps",
			mutate: withSteps(257),
			want:   []violation{{"plan.steps", "repeated.max_items"}},
		},
		{
			name:   "no domain",
			mutate: func(p *stage4v1.Plan) { p.Steps[1].Domain = "" },
			want:   []violation{{"plan.steps[1].domain", "required"}},
		},
		{
			name:   "no method",
			mutate: func(p *stage4v1.Plan) { p.Steps[1].Method = "" },
			want:   []violation{{"plan.steps[1].method", "required"}},
		},
		{
			name:   "no parameters",
			mutate: func(p *stage4v1.Plan) { p.Steps[1].Parameters = nil },
			want:   []violation{{"plan.steps[1].parameters", "required"}},
		},
		{
			name:   "empty parameters object",
			mutate: func(p *stage4v1.Plan) { p.Steps[1].Parameters = &structpb.Struct{} },
		},
		{
			name:   "nil step",
			mutate: func(p *stage4v1.Plan) { p.Steps[2] = nil },
			want: []violation{
				{"plan.steps[2].domain", "required"},
				{"plan.steps[2].method", "required"},
				{"plan.steps[2].parameters", "required"},
			},
		},
		{
			name:   "domain in upper case",
			mutate: func(p *stage4v1.Plan) { p.Steps[0].Domain = "Text" },
			want:   []violation{{"plan.steps[0].domain", "string.pattern"}},
		},
		{
			name:   "domain starting with a digit",
			mutate: func(p *stage4v1.Plan) { p.Steps[0].Domain = "9text" },
			want:   []violation{{"plan.steps[0].domain", "string.pattern"}},
		},
		{
			name:   "method with a dash",
			mutate: func(p *stage4v1.Plan) { p.Steps[0].Method = "to-upper" },
			want:   []violation{{"plan.steps[0].method", "string.pattern"}},
		},
		{
			name:   "method with a dot",
			mutate: func(p *stage4v1.Plan) { p.Steps[0].Method = "text.upper" },
			want:   []violation{{"plan.steps[0].method", "string.pattern"}},
		},
		{
			name:   "method of 65 characters",
			mutate: func(p *stage4v1.Plan) { p.Steps[0].Method = strings.Repeat("m", 65) },
			want:   []violation{{"plan.steps[0].method", "string.max_len"}},
		},
	})
}

func TestValidateBindings(t *testing.T) {
	t.Parallel()
	bind := func(src, dst uint32, param string) func(p *stage4v1.Plan) {
		return func(p *stage4v1.Plan) {
			p.DataBindings = []*stage4v1.DataBinding{{SourceStep: src, SourceOutput: "out", TargetStep: dst, TargetParameter: param}}
		}
	}
	runPlanCases(t, []planCase{
		{name: "backward reference", mutate: bind(0, 2, "input")},
		{name: "no bindings", mutate: func(p *stage4v1.Plan) { p.DataBindings = nil }},
		{
			name:   "forward reference",
			mutate: bind(2, 1, "input"),
			want:   []violation{{"plan.data_bindings[0].source_step", ruleBindingOrder}},
		},
		{
			name:   "self reference",
			mutate: bind(1, 1, "input"),
			want:   []violation{{"plan.data_bindings[0].source_step", ruleBindingOrder}},
		},
		{
			name:   "target past the last step",
			mutate: bind(0, 3, "input"),
			want:   []violation{{"plan.data_bindings[0].target_step", ruleBindingTarget}},
		},
		{
			name:   "largest target index",
			mutate: bind(0, math.MaxUint32, "input"),
			want: []violation{
				{"plan.data_bindings[0].target_step", "uint32.lt"},
				{"plan.data_bindings[0].target_step", ruleBindingTarget},
			},
		},
		{
			name:   "largest source index",
			mutate: bind(math.MaxUint32, 2, "input"),
			want: []violation{
				{"plan.data_bindings[0].source_step", "uint32.lt"},
				{"plan.data_bindings[0].source_step", ruleBindingOrder},
			},
		},
		{
			name: "same parameter fed twice",
			mutate: func(p *stage4v1.Plan) {
				bind(0, 2, "input")(p)
				p.DataBindings = append(p.DataBindings, &stage4v1.DataBinding{SourceStep: 1, SourceOutput: "x", TargetStep: 2, TargetParameter: "input"})
			},
			want: []violation{{"plan.data_bindings[1].target_parameter", ruleBindingDuplicate}},
		},
		{
			name: "same parameter name in two steps",
			mutate: func(p *stage4v1.Plan) {
				bind(0, 2, "input")(p)
				p.DataBindings = append(p.DataBindings, &stage4v1.DataBinding{SourceStep: 0, SourceOutput: "x", TargetStep: 1, TargetParameter: "input"})
			},
		},
		{
			name:   "overwrites a literal parameter",
			mutate: bind(0, 2, "text"),
			want:   []violation{{"plan.data_bindings[0].target_parameter", ruleBindingLiteral}},
		},
		{
			name:   "parameter that is only nested deeper",
			mutate: bind(0, 2, "locale"),
		},
		{
			name:   "target step with no parameters",
			mutate: func(p *stage4v1.Plan) { bind(0, 2, "text")(p); p.Steps[2].Parameters = nil },
			want:   []violation{{"plan.steps[2].parameters", "required"}},
		},
		{
			name:   "no source_output",
			mutate: func(p *stage4v1.Plan) { bind(0, 2, "input")(p); p.DataBindings[0].SourceOutput = "" },
			want:   []violation{{"plan.data_bindings[0].source_output", "required"}},
		},
		{
			name:   "no target_parameter",
			mutate: bind(0, 2, ""),
			want:   []violation{{"plan.data_bindings[0].target_parameter", "required"}},
		},
		{
			name: "source_output of 129 characters",
			mutate: func(p *stage4v1.Plan) {
				bind(0, 2, "input")(p)
				p.DataBindings[0].SourceOutput = strings.Repeat("o", 129)
			},
			want: []violation{{"plan.data_bindings[0].source_output", "string.max_len"}},
		},
		{
			name: "nil binding",
			mutate: func(p *stage4v1.Plan) {
				p.DataBindings = []*stage4v1.DataBinding{nil}
			},
			want: []violation{
				{"plan.data_bindings[0].source_output", "required"},
				{"plan.data_bindings[0].target_parameter", "required"},
				{"plan.data_bindings[0].source_step", ruleBindingOrder},
			},
		},
		{
			name: "1025 bindings",
			mutate: func(p *stage4v1.Plan) {
				p.DataBindings = nil
				for i := range 1025 {
					p.DataBindings = append(p.DataBindings, &stage4v1.DataBinding{
						SourceStep: 0, SourceOutput: "out", TargetStep: 1, TargetParameter: fmt.Sprint("p", i),
					})
				}
			},
			want: []violation{{"plan.data_bindings", "repeated.max_items"}},
		},
	})
}

// nestedObjects returns parameters of depth objects, the parameters object
// included: {"a": {"a": ... {"leaf": true}}}.
func nestedObjects(depth int) *structpb.Struct {
	s := mustStruct(map[string]any{"leaf": true})
	for range depth - 1 {
		s = &structpb.Struct{Fields: map[string]*structpb.Value{"a": structpb.NewStructValue(s)}}
	}
	return s
}

// nestedLists returns parameters of depth containers: {"l": [[...[1]...]]}.
func nestedLists(depth int) *structpb.Struct {
	v := structpb.NewNumberValue(1)
	for range depth - 1 {
		v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{v}})
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{"l": v}}
}

func TestValidateParameters(t *testing.T) {
	t.Parallel()
	// set puts v at key in the parameters of step 1.
	set := func(key string, v *structpb.Value) func(p *stage4v1.Plan) {
		return func(p *stage4v1.Plan) { p.Steps[1].Parameters.Fields[key] = v }
	}
	list := func(vs ...*structpb.Value) *structpb.Value {
		return structpb.NewListValue(&structpb.ListValue{Values: vs})
	}
	object := func(k string, v *structpb.Value) *structpb.Value {
		return structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{k: v}})
	}
	with := func(rule string) []violation { return []violation{{"plan.steps[1].parameters", rule}} }
	// bigStrings makes a plan of steps whose parameters are {"s": <n
	// bytes>}: n+1 bytes each.
	bigStrings := func(steps, n int) func(p *stage4v1.Plan) {
		return func(p *stage4v1.Plan) {
			p.DataBindings = nil
			p.Steps = nil
			for range steps {
				p.Steps = append(p.Steps, &stage4v1.Step{
					Domain: "text", Method: "upper",
					Parameters: &structpb.Struct{Fields: map[string]*structpb.Value{"s": structpb.NewStringValue(strings.Repeat("x", n))}},
				})
			}
		}
	}
	runPlanCases(t, []planCase{
		{name: "every JSON kind", mutate: set("k", list(
			structpb.NewNullValue(), structpb.NewBoolValue(false), structpb.NewNumberValue(-1.5e300),
			structpb.NewStringValue("é"), object("o", list()),
		))},
		{
			name:   "NaN in a list in an object",
			mutate: set("a", object("b", list(structpb.NewNumberValue(0), structpb.NewNumberValue(1), structpb.NewNumberValue(2), structpb.NewNumberValue(math.NaN())))),
			want:   with(ruleValueFinite),
			where:  "/a/b/3",
		},
		{
			name:   "+Inf in a nested object",
			mutate: set("a", object("b", object("c", structpb.NewNumberValue(math.Inf(1))))),
			want:   with(ruleValueFinite),
			where:  "/a/b/c",
		},
		{
			name:   "-Inf in a list",
			mutate: set("a", list(structpb.NewNumberValue(math.Inf(-1)))),
			want:   with(ruleValueFinite),
			where:  "/a/0",
		},
		{
			name:   "value without a kind",
			mutate: set("a", object("b", &structpb.Value{})),
			want:   with(ruleValueKind),
			where:  "/a/b",
		},
		{
			name:   "nil value in a list",
			mutate: set("a", list(structpb.NewBoolValue(true), nil)),
			want:   with(ruleValueKind),
			where:  "/a/1",
		},
		{
			name:   "key needing JSON pointer escapes",
			mutate: set("a/b~c", &structpb.Value{}),
			want:   with(ruleValueKind),
			where:  "/a~1b~0c",
		},
		{name: "depth 32 of objects", mutate: func(p *stage4v1.Plan) { p.Steps[1].Parameters = nestedObjects(32) }},
		{
			name:   "depth 33 of objects",
			mutate: func(p *stage4v1.Plan) { p.Steps[1].Parameters = nestedObjects(33) },
			want:   with(ruleDepth),
			where:  strings.Repeat("/a", 32) + " ",
		},
		{name: "depth 32 of lists", mutate: func(p *stage4v1.Plan) { p.Steps[1].Parameters = nestedLists(32) }},
		{
			name:   "depth 33 of lists",
			mutate: func(p *stage4v1.Plan) { p.Steps[1].Parameters = nestedLists(33) },
			want:   with(ruleDepth),
			where:  "/l" + strings.Repeat("/0", 31) + " ",
		},
		{name: "key of 256 bytes", mutate: set(strings.Repeat("k", 256), structpb.NewNullValue())},
		{
			name:   "key of 257 bytes",
			mutate: set(strings.Repeat("k", 257), structpb.NewNullValue()),
			want:   with(ruleKeyBytes),
		},
		{name: "string of 65536 bytes", mutate: set("s", structpb.NewStringValue(strings.Repeat("é", 32768)))},
		{
			name:   "string of 65537 bytes",
			mutate: set("s", structpb.NewStringValue(strings.Repeat("s", 65537))),
			want:   with(ruleStringBytes),
			where:  "/s",
		},
		{
			name:   "string that is not UTF-8",
			mutate: set("s", structpb.NewStringValue("\xff")),
			want:   with(ruleValueUTF8),
			where:  "/s",
		},
		{
			name:   "key that is not UTF-8",
			mutate: set("\xc3", structpb.NewNullValue()),
			want:   with(ruleValueUTF8),
		},
		// 16 steps of 1+65535 bytes are exactly 1 MiB.
		{name: "1 MiB in total", mutate: bigStrings(16, 65535)},
		{
			name:   "more than 1 MiB in total, reported once",
			mutate: bigStrings(17, 65535),
			want:   []violation{{"plan.steps[16].parameters", ruleTotalBytes}},
		},
		{
			name: "numbers, bools and nulls count 8 bytes",
			mutate: func(p *stage4v1.Plan) {
				bigStrings(16, 65535)(p)
				p.Steps[0].Parameters.Fields["n"] = structpb.NewNullValue() // 1 + 8 more bytes
			},
			want: []violation{{"plan.steps[15].parameters", ruleTotalBytes}},
		},
	})
}

func TestValidatePointerIsBounded(t *testing.T) {
	t.Parallel()
	key := strings.Repeat("é", 200) // 400 bytes: too long, and cut mid-rune
	p := validPlan(1)
	p.Steps[0].Parameters.Fields[key] = structpb.NewNumberValue(math.NaN())

	_, vs := requireInvalid(t, Validate(&stage4v1.ExecutePlanRequest{Plan: p}))
	require.Equal(t, []violation{
		{"plan.steps[0].parameters", ruleKeyBytes},
		{"plan.steps[0].parameters", ruleValueFinite},
	}, summarize(vs))
	for _, v := range vs {
		require.Less(t, len(v.GetMessage()), maxPointerBytes+100)
		require.Contains(t, v.GetMessage(), "/éé")
		require.Contains(t, v.GetMessage(), "...")
		require.True(t, strings.ToValidUTF8(v.GetMessage(), "?") == v.GetMessage(), "message is not UTF-8")
	}
}

func TestValidateHostileNesting(t *testing.T) {
	t.Parallel()
	// 2000 levels (near proto's decoding limit) arrive from the wire; the
	// walk stops past depth 32 and reports once.
	p := validPlan(1)
	p.Steps[0].Parameters = nestedObjects(2000)
	b, err := proto.Marshal(&stage4v1.ExecutePlanRequest{Plan: p})
	require.NoError(t, err)
	req := &stage4v1.ExecutePlanRequest{}
	require.NoError(t, proto.Unmarshal(b, req))

	_, vs := requireInvalid(t, Validate(req))
	require.Equal(t, []violation{{"plan.steps[0].parameters", ruleDepth}}, summarize(vs))
}

func TestValidateDoesNotMutate(t *testing.T) {
	t.Parallel()
	invalid := validPlan(4)
	invalid.Steps[1].Parameters.Fields["nan"] = structpb.NewNumberValue(math.NaN())
	invalid.Steps[2] = nil
	invalid.DataBindings = append(invalid.DataBindings, &stage4v1.DataBinding{SourceStep: 3, TargetStep: 9})
	addUnknownOnWire(t, invalid.Steps[0].Parameters)
	for _, tc := range []struct {
		name string
		plan *stage4v1.Plan
	}{
		{name: "valid", plan: validPlan(8)},
		{name: "invalid", plan: invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := &stage4v1.ExecutePlanRequest{Plan: tc.plan}
			before := proto.Clone(req)
			_ = Validate(req)
			require.True(t, proto.Equal(before, req), "Validate modified its input")
		})
	}
}

// manyViolations returns a plan with protovalidate violations, Go rule
// violations of every group, and parameters wide enough that map order would
// show.
func manyViolations(t *testing.T) *stage4v1.Plan {
	t.Helper()
	p := validPlan(6)
	p.UserId = "bad user"
	for i, st := range p.GetSteps() {
		for k := range 10 {
			st.Parameters.Fields[fmt.Sprint("k", k)] = structpb.NewNumberValue(math.Inf(i%2*2 - 1))
		}
	}
	p.DataBindings = append(p.DataBindings, &stage4v1.DataBinding{SourceStep: 4, SourceOutput: "o", TargetStep: 2, TargetParameter: "text"})
	addUnknownOnWire(t, p.Steps[3].Parameters.Fields["options"])
	return p
}

func TestValidateDeterministic(t *testing.T) {
	t.Parallel()
	req := &stage4v1.ExecutePlanRequest{Plan: manyViolations(t)}
	first, _ := requireInvalid(t, Validate(req))
	for range 50 {
		// A fresh decode gets fresh maps, with a fresh iteration order.
		b, err := proto.Marshal(req)
		require.NoError(t, err)
		again := &stage4v1.ExecutePlanRequest{}
		require.NoError(t, proto.Unmarshal(b, again))
		st, _ := requireInvalid(t, Validate(again))
		require.Equal(t, first.Message(), st.Message())
		require.True(t, proto.Equal(first.Proto(), st.Proto()), "details differ between runs")
	}
}

func TestValidateFailClosed(t *testing.T) {
	t.Parallel()
	t.Run("first violation named, all in details, in rule order", func(t *testing.T) {
		t.Parallel()
		st, vs := requireInvalid(t, Validate(&stage4v1.ExecutePlanRequest{Plan: manyViolations(t)}))
		got := summarize(vs)
		// protovalidate's first, then unknown fields, bindings, parameters.
		require.Equal(t, violation{"plan.user_id", "string.pattern"}, got[0])
		require.Equal(t, violation{"plan.steps[3].parameters", ruleUnknownFields}, got[1])
		require.Equal(t, violation{"plan.data_bindings[3].source_step", ruleBindingOrder}, got[2])
		require.Equal(t, violation{"plan.data_bindings[3].target_parameter", ruleBindingLiteral}, got[3])
		require.Len(t, got, 4+6*10)
		for _, v := range got[4:] {
			require.Equal(t, ruleValueFinite, v.rule)
		}
		require.Contains(t, vs[4].GetMessage(), "/k0 ")
		require.Equal(t, "plan.user_id: "+vs[0].GetMessage()+fmt.Sprintf(" (and %d more violations)", len(got)-1), st.Message())
	})

	t.Run("one violation has no count", func(t *testing.T) {
		t.Parallel()
		p := validPlan(2)
		p.TriggerType = "Cron"
		st, vs := requireInvalid(t, Validate(&stage4v1.ValidatePlanRequest{Plan: p}))
		require.Equal(t, "plan.trigger_type: "+vs[0].GetMessage(), st.Message())
	})

	t.Run("details are capped, the count is not", func(t *testing.T) {
		t.Parallel()
		p := validPlan(1)
		for i := range 300 {
			p.Steps[0].Parameters.Fields[fmt.Sprintf("k%03d", i)] = &structpb.Value{}
		}
		st, vs := requireInvalid(t, Validate(&stage4v1.ExecutePlanRequest{Plan: p}))
		require.Len(t, vs, maxViolations)
		require.Contains(t, vs[0].GetMessage(), "/k000 ")
		require.Contains(t, vs[99].GetMessage(), "/k099 ")
		require.True(t, strings.HasSuffix(st.Message(), " (and 299 more violations)"), st.Message())
	})

	t.Run("validator failure is INTERNAL without internals", func(t *testing.T) {
		t.Parallel()
		err := validateWith(failingValidator{}, nil, &stage4v1.ExecutePlanRequest{Plan: validPlan(1)})
		requireInternal(t, err)
		require.NotContains(t, err.Error(), "secret")
	})

	t.Run("nil request is INTERNAL", func(t *testing.T) {
		t.Parallel()
		requireInternal(t, Validate(nil))
	})
}

// failingValidator fails as protovalidate does when it cannot compile rules.
type failingValidator struct{}

func (failingValidator) Validate(proto.Message, ...protovalidate.ValidationOption) error {
	return errors.New("compilation error: secret internals")
}

func requireInternal(t *testing.T, err error) {
	t.Helper()
	st, ok := status.FromError(err)
	require.True(t, ok)
	require.Equal(t, codes.Internal, st.Code())
	require.Len(t, st.Details(), 1)
	info, ok := st.Details()[0].(*errdetails.ErrorInfo)
	require.True(t, ok)
	require.Equal(t, "stage4", info.GetDomain())
	require.Equal(t, "INTERNAL", info.GetReason())
}

func TestPlanID(t *testing.T) {
	t.Parallel()
	// Two parameter maps with the same contents, filled in opposite orders.
	keys := make([]string, 50)
	for i := range keys {
		keys[i] = fmt.Sprint("key", i)
	}
	forward, backward := validPlan(2), validPlan(2)
	for i := range keys {
		forward.Steps[0].Parameters.Fields[keys[i]] = structpb.NewNumberValue(float64(i))
		j := len(keys) - 1 - i
		backward.Steps[0].Parameters.Fields[keys[j]] = structpb.NewNumberValue(float64(j))
	}
	fp := NewFingerprinter([]byte("key of one store"))
	PlanID := fp.PlanID
	id := PlanID(validPlan(2))
	require.Regexp(t, `^hmac-sha256:[0-9a-f]{64}$`, id)
	require.NotEqual(t, id, NewFingerprinter([]byte("key of another store")).PlanID(validPlan(2)),
		"ids are keyed: without the key a reader cannot confirm a guessed plan")
	require.NotEqual(t, strings.TrimPrefix(id, "hmac-"), ContentDigest(validPlan(2)))

	for _, tc := range []struct {
		name string
		a, b *stage4v1.Plan
		same bool
	}{
		{name: "equal plans", a: validPlan(2), b: validPlan(2), same: true},
		{name: "maps filled in different orders", a: forward, b: backward, same: true},
		{name: "another user", a: validPlan(2), b: func() *stage4v1.Plan { p := validPlan(2); p.UserId = "bob"; return p }(), same: false},
		{name: "another parameter value", a: forward, b: func() *stage4v1.Plan {
			p := proto.CloneOf(forward)
			p.Steps[0].Parameters.Fields["key7"] = structpb.NewNumberValue(8)
			return p
		}(), same: false},
		{name: "steps swapped", a: validPlan(2), b: func() *stage4v1.Plan {
			p := validPlan(2)
			p.Steps[0], p.Steps[1] = p.Steps[1], p.Steps[0]
			return p
		}(), same: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b := PlanID(tc.a), PlanID(tc.b)
			require.NotEmpty(t, a)
			require.Equal(t, tc.same, a == b)
			require.Equal(t, a, PlanID(tc.a), "not stable across calls")
		})
	}

	t.Run("nil plan", func(t *testing.T) {
		t.Parallel()
		require.Empty(t, PlanID(nil))
	})
}
