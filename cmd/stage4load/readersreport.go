package main

import (
	"fmt"
	"io"
	"strings"
)

// writeReadersMarkdown renders the audit readers section. Values across
// rounds read "median (min–max)".
func writeReadersMarkdown(w io.Writer, r *readersResult) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "\n## Audit readers\n\n")
	fmt.Fprintf(w, "ExecutePlan from %d closed-loop callers against `stage4 serve --audit-readers '*'` whose log starts with %d events "+
		"(%.0f MiB of records, written by `stage4load fill`: executions of PLAN_RECEIVED, EXECUTION_STARTED and EXECUTION_COMPLETED, "+
		"every hundredth EXECUTION_FAILED instead; the calls add more). (a) alone; (b) while %d readers, each on a connection of its own, "+
		"list type %s by pages of %d, following next_page_token and starting over at the end, each call with a deadline of %s, and after "+
		"RESOURCE_EXHAUSTED (or another error) back off %v, doubling up to %v, jittered; (b') the same against a second stage4 serve, "+
		"on a copy of the log, with the limits on audit reads out of reach (`%s`), as the gateway was before them. "+
		"(a) and (b) run on the serve with the default limits, which only audit reads meet. "+
		"%d rounds of (a), (b), (b') one after another: %s warm-up (readers reading), %s measured. "+
		"Readers read of each page only its events' types (checked) and next_page_token, so that the load generator, "+
		"which shares the CPUs, leaves them to stage4; reader figures count the calls that ended in the measured phase, "+
		"their latency includes waiting for a turn.\n\n",
		r.Callers, r.Records, float64(r.LogBytes)/(1<<20), r.Readers, r.EventType, r.PageSize, r.Deadline,
		readerBackoff, readerMaxBackoff, strings.Join(r.LimitsOff, " "), len(r.Rounds)/len(readConfigs), r.Warmup, r.Measure)
	fmt.Fprintf(w, "| configuration | ExecutePlan req/s | p50 ms | p99 ms | errors | stage4 CPU cores | load generator CPU cores "+
		"| records read/s | pages/s | refused/s | read p50 ms | read p99 ms | other read errors |\n")
	fmt.Fprintf(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, s := range r.Summary {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %d | %s | %s |", readConfigNames[s.Config], fmtStat(s.RPS, "%.0f"),
			fmtStat(s.P50, "%.3f"), fmtStat(s.P99, "%.1f"), s.Errors, fmtStat(s.GatewayCores, "%.2f"), fmtStat(s.LoadgenCores, "%.2f"))
		if s.RecordsPerSec == nil {
			fmt.Fprintf(w, " – | – | – | – | – | – |\n")
			continue
		}
		fmt.Fprintf(w, " %s | %s | %s | %s | %s | %d |\n", fmtStat(*s.RecordsPerSec, "%.0f"), fmtStat(*s.OKPerSec, "%.1f"),
			fmtStat(*s.RefusedPerSec, "%.1f"), fmtStat(*s.ReadP50, "%.0f"), fmtStat(*s.ReadP99, "%.0f"), s.ReadOther)
	}
	fmt.Fprintf(w, "\nExecutePlan throughput with the readers over without, paired within each round: default limits %s, limits off %s.\n",
		fmtStat(r.RatioLimited, "%.3f"), fmtStat(r.RatioOff, "%.3f"))
	if first := firstReadError(r); first != "" {
		fmt.Fprintf(w, "\nFirst other read error: `%s`\n", first)
	}
	if len(r.Profiles) > 0 {
		fmt.Fprintf(w, "\nAfter the rounds, each configuration ran once more while its stage4 was CPU-profiled:\n\n")
		fmt.Fprintf(w, "| configuration | ExecutePlan req/s | stage4 CPU in the profile per ExecutePlan, µs | records read/s | profile |\n|---|--:|--:|--:|---|\n")
		for _, p := range r.Profiles {
			rec := "–"
			if p.Readers != nil {
				rec = fmt.Sprintf("%.0f", p.Readers.RecordsPerSec)
			}
			fmt.Fprintf(w, "| %s | %.0f | %.0f | %s | %s |\n", readConfigNames[p.Config], p.Exec.RPS, p.CPUPerExec, rec, p.Profile)
		}
	}
}

// firstReadError is the first error other than RESOURCE_EXHAUSTED that a
// reader got, if any.
func firstReadError(r *readersResult) string {
	for _, x := range r.Rounds {
		if x.Readers != nil && x.Readers.FirstOther != "" {
			return x.Readers.FirstOther
		}
	}
	return ""
}
