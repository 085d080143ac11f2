package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// pgRatioRow compares the PostgreSQL configurations with (c), the file
// store, at one concurrency, pairing them within each round.
type pgRatioRow struct {
	Concurrency int  `json:"concurrency"`
	RPSDOverC   stat `json:"rps_d_over_c"`
	RPSEOverC   stat `json:"rps_e_over_c"`
	RPSEOverD   stat `json:"rps_e_over_d"`
	AddedP50DC  stat `json:"p50_added_by_d_over_c_ms"`
}

// The PostgreSQL target of the project's replicas brief (issue 9).
const (
	targetPGRatio     = 0.7
	targetPGRatioConc = 64
)

// summarizePG fills PGRatios, and the PostgreSQL target, from Rounds.
func (r *results) summarizePG(cfg config, pick func(string, int) []roundResult) {
	for _, conc := range cfg.pgConcurrency {
		c, d, e := pick(cfgStage4, conc), pick(cfgStage4PG, conc), pick(cfgStage4PG2, conc)
		if len(d) == 0 || len(c) != len(d) || len(d) != len(e) {
			continue
		}
		var dc, ec, ed, p50 []float64
		for i := range d {
			dc = append(dc, d[i].RPS/c[i].RPS)
			ec = append(ec, e[i].RPS/c[i].RPS)
			ed = append(ed, e[i].RPS/d[i].RPS)
			p50 = append(p50, d[i].P50-c[i].P50)
		}
		row := pgRatioRow{Concurrency: conc, RPSDOverC: newStat(dc), RPSEOverC: newStat(ec), RPSEOverD: newStat(ed), AddedP50DC: newStat(p50)}
		r.PGRatios = append(r.PGRatios, row)
		if conc == targetPGRatioConc {
			r.Targets = append(r.Targets, targetCheck{
				Target:   fmt.Sprintf("throughput of (d), PostgreSQL, >= %.2fx (c), the file, at %d callers", targetPGRatio, targetPGRatioConc),
				Measured: fmt.Sprintf("%.3fx (median; min %.3f, max %.3f)", row.RPSDOverC.Median, row.RPSDOverC.Min, row.RPSDOverC.Max),
				Met:      row.RPSDOverC.Median >= targetPGRatio,
			})
		}
	}
}

// writePGMarkdown renders the PostgreSQL section, when (d) and (e) ran.
func writePGMarkdown(w io.Writer, r *results, cfg config) {
	if len(r.PGRatios) == 0 {
		return
	}
	fmt.Fprintf(w, "\n## PostgreSQL audit store\n\n")
	fmt.Fprintf(w, "(c) keeps its audit log in a local directory of segments; (d) is the same `stage4 serve` with `--audit-log postgres://…` "+
		"on a database made for this run, and (e) two such processes (`--replica-name` bench-pg-2a and -2b) on "+
		"another database, each call going to the next of them in turn. They run right after (c) in every round, "+
		"at %s callers.", joinInts(cfg.pgConcurrency))
	if pg := r.PG; pg != nil {
		var settings []string
		for _, k := range pgSettings {
			settings = append(settings, fmt.Sprintf("%s=%s", k, pg.Settings[k]))
		}
		fmt.Fprintf(w, " Server: %s, on this machine, sharing its CPUs; %s.", pg.Server, strings.Join(settings, ", "))
	}
	fmt.Fprintf(w, "\n\n| configuration | callers | req/s | p50 ms | p99 ms | gateway CPU ms/1000 req | PostgreSQL sessions CPU ms/1000 req | Stage-3 CPU ms/1000 req |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, s := range r.Summary {
		if !slices.Contains(cfg.pgConcurrency, s.Concurrency) || !slices.Contains([]string{cfgStage4, cfgStage4PG, cfgStage4PGRID, cfgStage4PG2}, s.Config) {
			continue
		}
		g, p := "–", "–"
		if s.GatewayCPUPer1k != nil {
			g = fmtStat(*s.GatewayCPUPer1k, "%.0f")
		}
		if s.PostgresCPUPer1k != nil {
			p = fmtStat(*s.PostgresCPUPer1k, "%.0f")
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %s |\n", configNames[s.Config], s.Concurrency,
			fmtStat(s.RPS, "%.0f"), fmtStat(s.P50, "%.3f"), fmtStat(s.P99, "%.3f"), g, p, fmtStat(s.Stage3CPUPer1k, "%.0f"))
	}
	fmt.Fprintf(w, "\nRatios within each round, summarized across rounds:\n\n")
	fmt.Fprintf(w, "| callers | throughput d/c (PostgreSQL/file) | throughput e/c (2 replicas/file) | throughput e/d | p50 added by d over c, ms |\n|--:|--:|--:|--:|--:|\n")
	for _, x := range r.PGRatios {
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s |\n", x.Concurrency, fmtStat(x.RPSDOverC, "%.3f"), fmtStat(x.RPSEOverC, "%.3f"),
			fmtStat(x.RPSEOverD, "%.3f"), fmtStat(x.AddedP50DC, "%+.3f"))
	}
	if pg := r.PG; pg != nil && len(pg.Verified) > 0 {
		fmt.Fprintf(w, "\nAfter the run, `stage4 audit verify URL` on each database:\n\n")
		for _, v := range pg.Verified {
			fmt.Fprintf(w, "- %s\n", v)
		}
	}
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, " and ")
}
