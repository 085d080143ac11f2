package segindex

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// stretch makes consecutive runs of the given Counts, each covering as many
// records as it has entries, starting at record first.
func stretch(first uint64, counts ...uint64) []RunInfo {
	var runs []RunInfo
	for _, c := range counts {
		last := first + max(c, 1) - 1
		runs = append(runs, RunInfo{First: first, Last: last, Count: c})
		first = last + 1
	}
	return runs
}

func TestPlanMerge(t *testing.T) {
	t.Parallel()
	withGap := append(stretch(1, 1, 1), stretch(100, 5)...)
	gapThenChain := append(stretch(1, 10), stretch(100, 3, 2, 2)...)
	tests := []struct {
		name string
		live []RunInfo
		want []RunInfo
	}{
		{"none", nil, nil},
		{"one", stretch(1, 8), nil},
		{"two equal", stretch(1, 1, 1), stretch(1, 1, 1)},
		{"decreasing", stretch(1, 8, 4, 2, 1), nil},
		{"carry chain", stretch(1, 8, 4, 2, 1, 1), stretch(1, 8, 4, 2, 1, 1)},
		{"short carry", stretch(1, 8, 2, 1, 1), stretch(9, 2, 1, 1)},
		{"decreasing but the sum catches up", stretch(1, 10, 9, 8), stretch(1, 10, 9, 8)},
		{"a big new run absorbs small ones", stretch(1, 100, 3, 50), stretch(101, 3, 50)},
		{"an empty run is merged", stretch(1, 8, 0, 1), stretch(9, 0, 1)},
		{"never across a gap", withGap, withGap[:2]},
		{"the trailing stretch first", gapThenChain, gapThenChain[1:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, PlanMerge(tt.live))
		})
	}
}

// TestPlanMergeBounds seals 1000 segments, merging as PlanMerge says after
// each, and checks the bounds PlanMerge documents: at most 1 + log2(N/c)
// runs, and each entry rewritten at most 1 + log2(N/c) times.
func TestPlanMergeBounds(t *testing.T) {
	t.Parallel()
	const seals = 1000
	tests := []struct {
		name string
		size func(i int, rng *rand.Rand) uint64
	}{
		{"equal segments", func(int, *rand.Rand) uint64 { return 4000 }},
		{"uneven segments", func(_ int, rng *rand.Rand) uint64 { return 100 + rng.Uint64N(8000) }},
		{"shrinking segments", func(i int, _ *rand.Rand) uint64 { return uint64(2*seals - i) }},
		{"small segments from restarts", func(i int, _ *rand.Rand) uint64 {
			if i%7 == 0 {
				return 4
			}
			return 4000
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(1, 2))
			type simRun struct {
				info  RunInfo
				seals []int // the seals whose entries it holds
			}
			var live []simRun
			infos := func() []RunInfo {
				var out []RunInfo
				for _, r := range live {
					out = append(out, r.info)
				}
				return out
			}
			sizes := make([]uint64, seals)
			rewrites := make([]int, seals)
			var total, rewritten uint64
			maxRuns := 0
			next := uint64(1)
			for i := range seals {
				sizes[i] = tt.size(i, rng)
				total += sizes[i]
				live = append(live, simRun{RunInfo{First: next, Last: next + 9, Count: sizes[i]}, []int{i}})
				next += 10

				plan := PlanMerge(infos())
				if len(plan) > 0 {
					from := len(live) - len(plan)
					require.Equal(t, infos()[from:], plan, "merges a suffix")
					merged := simRun{info: RunInfo{First: plan[0].First, Last: plan[len(plan)-1].Last}}
					for _, r := range live[from:] {
						merged.info.Count += r.info.Count
						merged.seals = append(merged.seals, r.seals...)
					}
					for _, s := range merged.seals {
						rewrites[s]++
						rewritten += sizes[s]
					}
					live = append(live[:from], merged)
				}
				require.Empty(t, PlanMerge(infos()), "one merge restores the rule")
				maxRuns = max(maxRuns, len(live))

				minSize := sizes[0]
				for _, s := range sizes[:i+1] {
					minSize = min(minSize, s)
				}
				require.LessOrEqual(t, float64(len(live)), 1+math.Log2(float64(total)/float64(minSize)))
			}
			for i, n := range rewrites {
				require.LessOrEqual(t, float64(n), 1+math.Log2(float64(total)/float64(sizes[i])), "seal %d", i)
			}
			perEntry := float64(rewritten) / float64(total)
			require.LessOrEqual(t, float64(maxRuns), 2*math.Log2(seals))
			require.LessOrEqual(t, perEntry, math.Log2(seals)+2)
			t.Logf("runs at most %d, now %d; each entry rewritten %.2f times on average, at most %d times",
				maxRuns, len(live), perEntry, maxOf(rewrites))
		})
	}
}

func maxOf(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
