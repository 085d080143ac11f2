package server

import (
	"fmt"
	"testing"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// BenchmarkValidatePlan measures Validate on valid plans, the common case
// and the one every ExecutePlan pays for twice (interceptor and handler).
func BenchmarkValidatePlan(b *testing.B) {
	for _, n := range []int{1, 8, 64, 256} {
		req := &stage4v1.ExecutePlanRequest{Plan: validPlan(n)}
		b.Run(fmt.Sprintf("steps=%d/bindings=%d", n, len(req.GetPlan().GetDataBindings())), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := Validate(req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkValidateCatalog measures the cost of Stage-3's catalogue: the
// same valid plans validated without one (Validate) and against the
// reference Stage-3's (a Validator), whose JSON Schemas check every
// step's parameters.
func BenchmarkValidateCatalog(b *testing.B) {
	for _, n := range []int{1, 8, 64, 256} {
		req := &stage4v1.ExecutePlanRequest{Plan: catalogBenchPlan(n)}
		for _, c := range []struct {
			name string
			v    *Validator
		}{
			{"none", nil},
			{"reference", NewValidator(referenceCatalogs(b))},
		} {
			b.Run(fmt.Sprintf("steps=%d/catalog=%s", n, c.name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := c.v.Validate(req); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// catalogBenchPlan is a valid plan of n steps that the reference Stage-3's
// catalogue lists: text.upper with a literal text, text.concat with its
// left bound to the step before, math.add, and again.
func catalogBenchPlan(n int) *stage4v1.Plan {
	p := &stage4v1.Plan{UserId: "alice", TokenHash: "alice-token", TriggerType: "manual"}
	for i := range n {
		switch i % 3 {
		case 0:
			p.Steps = append(p.Steps, &stage4v1.Step{Domain: "text", Method: "upper",
				Parameters: mustStruct(map[string]any{"text": fmt.Sprintf("input of step %d", i)})})
		case 1:
			p.Steps = append(p.Steps, &stage4v1.Step{Domain: "text", Method: "concat",
				Parameters: mustStruct(map[string]any{"right": "!"})})
			p.DataBindings = append(p.DataBindings, &stage4v1.DataBinding{
				SourceStep: uint32(i - 1), SourceOutput: "text", TargetStep: uint32(i), TargetParameter: "left"})
		case 2:
			p.Steps = append(p.Steps, &stage4v1.Step{Domain: "math", Method: "add",
				Parameters: mustStruct(map[string]any{"a": i, "b": 2})})
		}
	}
	return p
}
