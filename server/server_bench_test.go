package server

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// chainPlan is an n-step plan the reference Stage-3 runs: step 0
// upper-cases a text, and every later step upper-cases its predecessor's
// output, fed by a data binding.
func chainPlan(n int) *stage4v1.Plan {
	p := runnablePlan("bench")
	p.Steps = []*stage4v1.Step{{Domain: "text", Method: "upper", Parameters: mustStruct(map[string]any{"text": "hello, stage4"})}}
	p.DataBindings = nil
	for i := 1; i < n; i++ {
		p.Steps = append(p.Steps, &stage4v1.Step{Domain: "text", Method: "upper", Parameters: mustStruct(map[string]any{})})
		p.DataBindings = append(p.DataBindings, &stage4v1.DataBinding{
			SourceStep: uint32(i - 1), SourceOutput: "text", TargetStep: uint32(i), TargetParameter: "text",
		})
	}
	return p
}

// BenchmarkExecutePlan is one ExecutePlan at a time through the whole
// in-process stack: bufconn gRPC, the audit interceptor with validation and
// a real fsynced log, the Stage-3 client and the reference Stage-3. Two
// fsyncs per call are its floor.
func BenchmarkExecutePlan(b *testing.B) {
	for _, n := range []int{1, 8, 64, 256} {
		b.Run(fmt.Sprintf("steps=%d", n), func(b *testing.B) {
			h := newHarness(b, harnessOptions{})
			req := &stage4v1.ExecutePlanRequest{Plan: chainPlan(n)}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				res, err := h.client.ExecutePlan(ctx, req)
				require.NoError(b, err)
				require.Len(b, res.GetResult().GetResults(), n)
			}
		})
	}
}
