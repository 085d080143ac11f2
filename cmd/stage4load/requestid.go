package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// The configurations of --request-id: (c) and (d) again, every call with
// a request_id of its own, run right after them in every round so that
// each pair meets the same machine and the same log.
const (
	cfgStage4RID   = "c2-stage4-request-id"
	cfgStage4PGRID = "d2-stage4-pg-request-id"
)

// ridBase is the configuration that a --request-id one repeats.
var ridBase = map[string]string{cfgStage4RID: cfgStage4, cfgStage4PGRID: cfgStage4PG}

// withRequestIDs adds, after (c) and (d) in configs, their runs with
// request ids.
func withRequestIDs(configs []string) []string {
	var out []string
	for _, c := range configs {
		out = append(out, c)
		for rid, base := range ridBase {
			if base == c {
				out = append(out, rid)
			}
		}
	}
	return out
}

// requestIDs makes a request id per call: unique in this run and across
// runs on one database (a random prefix), as a client sets a UUID.
func requestIDs() func() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand documents it)
	prefix := "load-" + hex.EncodeToString(b[:]) + "-"
	var n atomic.Uint64
	return func() string { return prefix + strconv.FormatUint(n.Add(1), 10) }
}

// keyedCaller is caller's function for the clients of cfgName's base,
// each request with a new request_id. check sees the response's step
// results.
func keyedCaller(clients []stage4v1.Stage4ServiceClient, p *stage4v1.Plan, check func(int) error) callFunc {
	next := requestIDs()
	var turn atomic.Uint64
	return func(ctx context.Context) error {
		client := clients[int(turn.Add(1)%uint64(len(clients)))]
		res, err := client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: p, RequestId: next()})
		if err != nil {
			return err
		}
		return check(len(res.GetResult().GetResults()))
	}
}

// ridRatioRow compares a configuration with a request_id on every call
// against the same without, at one concurrency, pairing them within each
// round.
type ridRatioRow struct {
	Config      string `json:"config"` // the configuration with request ids
	Concurrency int    `json:"concurrency"`
	RPSRatio    stat   `json:"rps_with_over_without"`
	AddedP50    stat   `json:"p50_added_ms"`
	AddedCPU    stat   `json:"gateway_cpu_added_us_per_req"`
}

// The target of issue 20: at most 10% fewer requests per second with a
// request_id.
const targetRIDRatio = 0.90

// summarizeRequestIDs fills RIDRatios, and their targets, from Rounds.
func (r *results) summarizeRequestIDs(cfg config, pick func(string, int) []roundResult) {
	for _, rid := range []string{cfgStage4RID, cfgStage4PGRID} {
		for _, conc := range cfg.concurrency {
			with, without := pick(rid, conc), pick(ridBase[rid], conc)
			if len(with) == 0 || len(with) != len(without) {
				continue
			}
			var ratio, p50, cpu []float64
			for i := range with {
				ratio = append(ratio, with[i].RPS/without[i].RPS)
				p50 = append(p50, with[i].P50-without[i].P50)
				cpu = append(cpu, with[i].CPUPer1k[roleGateway]-without[i].CPUPer1k[roleGateway])
			}
			row := ridRatioRow{Config: rid, Concurrency: conc, RPSRatio: newStat(ratio), AddedP50: newStat(p50), AddedCPU: newStat(cpu)}
			r.RIDRatios = append(r.RIDRatios, row)
			r.Targets = append(r.Targets, targetCheck{
				Target: fmt.Sprintf("throughput of %s >= %.2fx %s at %d callers", configNames[rid], targetRIDRatio,
					configNames[ridBase[rid]], conc),
				Measured: fmt.Sprintf("%.3fx (median; min %.3f, max %.3f)", row.RPSRatio.Median, row.RPSRatio.Min, row.RPSRatio.Max),
				Met:      row.RPSRatio.Median >= targetRIDRatio,
			})
		}
	}
}

// writeRequestIDMarkdown renders the request_id section, when it ran.
func writeRequestIDMarkdown(w io.Writer, r *results) {
	if len(r.RIDRatios) == 0 {
		return
	}
	fmt.Fprintf(w, "\n## ExecutePlan with a request_id\n\n")
	fmt.Fprintf(w, "With `--request-id`, every round runs (c) and (d) a second time right after themselves, on the same "+
		"processes, with a new `request_id` on every call: each call claims its key in the audit store before "+
		"PLAN_RECEIVED and stores its answer with its terminal event. Ratios are taken within each round:\n\n")
	fmt.Fprintf(w, "| configuration | callers | throughput with/without | p50 added, ms | gateway CPU added, µs/req |\n|---|--:|--:|--:|--:|\n")
	for _, x := range r.RIDRatios {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s |\n", configNames[x.Config], x.Concurrency,
			fmtStat(x.RPSRatio, "%.3f"), fmtStat(x.AddedP50, "%+.3f"), fmtStat(x.AddedCPU, "%+.0f"))
	}
}
