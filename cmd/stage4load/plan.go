package main

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// The reference Stage-3 knows alice with this token.
const (
	benchUser  = "alice"
	benchToken = "alice-token"
)

// benchPlan is the plan of the closed-loop runs: valid, three steps over
// two domains, one data binding, as a user would write it.
func benchPlan() *stage4v1.Plan {
	return &stage4v1.Plan{
		UserId:      benchUser,
		TokenHash:   benchToken,
		TriggerType: "manual",
		Steps: []*stage4v1.Step{
			{Domain: "text", Method: "upper", Parameters: mustStruct(map[string]any{"text": "the quick brown fox"})},
			{Domain: "text", Method: "length", Parameters: mustStruct(map[string]any{})},
			{Domain: "math", Method: "add", Parameters: mustStruct(map[string]any{"a": 40, "b": 2})},
		},
		DataBindings: []*stage4v1.DataBinding{
			{SourceStep: 0, SourceOutput: "text", TargetStep: 1, TargetParameter: "text"},
		},
	}
}

// scalePlan is a valid plan of n text steps in a chain: step 0 has a
// literal text, and every later step reads the previous step's output
// through a binding, so validation and Stage-3 both do work per step.
func scalePlan(n int) *stage4v1.Plan {
	p := &stage4v1.Plan{UserId: benchUser, TokenHash: benchToken, TriggerType: "schedule"}
	for i := range n {
		method, params := "upper", map[string]any{}
		if i == 0 {
			params["text"] = "the quick brown fox"
		} else {
			if i%2 == 1 {
				method = "lower"
			}
			p.DataBindings = append(p.DataBindings, &stage4v1.DataBinding{
				SourceStep: uint32(i - 1), SourceOutput: "text", TargetStep: uint32(i), TargetParameter: "text",
			})
		}
		p.Steps = append(p.Steps, &stage4v1.Step{Domain: "text", Method: method, Parameters: mustStruct(params)})
	}
	return p
}

// describePlan renders a plan's shape for the report.
func describePlan(p *stage4v1.Plan) string {
	steps := make([]string, len(p.GetSteps()))
	for i, s := range p.GetSteps() {
		steps[i] = s.GetDomain() + "." + s.GetMethod()
	}
	var binds []string
	for _, b := range p.GetDataBindings() {
		binds = append(binds, fmt.Sprintf("step %d %q -> step %d %q", b.GetSourceStep(), b.GetSourceOutput(), b.GetTargetStep(), b.GetTargetParameter()))
	}
	return fmt.Sprintf("user %s, %d steps (%s), %d data binding(s) (%s)",
		p.GetUserId(), len(steps), strings.Join(steps, ", "), len(binds), strings.Join(binds, "; "))
}

// mustStruct builds parameters from constants; a failure is a bug here.
func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}
