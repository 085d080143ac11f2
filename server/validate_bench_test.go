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
