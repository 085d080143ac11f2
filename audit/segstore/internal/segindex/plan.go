package segindex

// PlanMerge returns the runs to merge next, consecutive runs of live (sorted
// by First, as ListRuns returns them), or none.
//
// The policy is a binary counter that merges a carry chain at once: within a
// stretch of runs without gaps, it merges from the first run whose Count is
// at most the sum of the Counts after it, through the end of the stretch.
// One merge restores the rule, so that every run has more entries than all
// later runs of its stretch together. With N entries, runs of at least c
// entries, and the rule restored after each run that sealing a segment
// appends:
//
//   - a stretch holds at most 1 + log2(N/c) runs, the runs a lookup reads;
//   - an entry is rewritten at most 1 + log2(N/c) times, where c is the
//     Count of the run it was first written in: every merge after its first
//     one at least doubles the run that holds it.
//
// Gaps, segments whose runs the store has yet to rebuild, split the live
// runs into stretches that are never merged across. The last stretch that
// breaks the rule is planned first. (Runs rebuilt into a gap are not
// appended, so the rewrite bound does not count them; they are a one-off.)
func PlanMerge(live []RunInfo) []RunInfo {
	end := len(live)
	for end > 0 {
		// The stretch live[start:end] has no gaps.
		start := end - 1
		for start > 0 && live[start-1].Last+1 == live[start].First {
			start--
		}
		var after uint64 // Counts of live[i+1:end]
		from := -1
		for i := end - 1; i >= start; i-- {
			if i < end-1 && live[i].Count <= after {
				from = i
			}
			after += live[i].Count
		}
		if from >= 0 {
			return live[from:end]
		}
		end = start
	}
	return nil
}
