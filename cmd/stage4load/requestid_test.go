package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// TestMeasureAllWithRequestIDs: --request-id runs (c) again right after
// itself in every round, compares the two and reports it; the stand-in
// for stage4 is a proxy, which ignores request ids.
func TestMeasureAllWithRequestIDs(t *testing.T) {
	ref := startStage3(t, stage3ref.DefaultTokens())
	pid := os.Getpid()
	e := env{
		direct:    stage3v1.NewStage3ServiceClient(dial(t, ref.Addr)),
		proxy:     startProxy(t, ref.Addr),
		stage4:    startProxy(t, ref.Addr),
		stage3PID: pid, proxyPID: pid, stage4PID: pid,
	}
	cfg := config{
		concurrency: []int{1, 4},
		rounds:      2,
		warmup:      5 * time.Millisecond,
		measure:     30 * time.Millisecond,
		requestID:   true,
		out:         filepath.Join(t.TempDir(), "PERFORMANCE.md"),
	}
	var progress bytes.Buffer
	res, err := measureAll(t.Context(), e, cfg, 0.13, &progress)
	require.NoError(t, err)
	require.Len(t, res.Rounds, 2*2*4) // rounds x concurrencies x (a), (b), (c), (c2)
	for i, r := range res.Rounds {
		if r.Config == cfgStage4RID {
			require.Equal(t, cfgStage4, res.Rounds[i-1].Config, "right after (c)")
		}
	}
	require.Len(t, res.RIDRatios, 2)
	require.Equal(t, cfgStage4RID, res.RIDRatios[0].Config)
	require.Positive(t, res.RIDRatios[0].RPSRatio.Median)
	res.Meta = newMeta(cfg, t.TempDir())
	require.NoError(t, writeOutputs(res, cfg, &bytes.Buffer{}))
	md, err := os.ReadFile(cfg.out)
	require.NoError(t, err)
	require.Contains(t, string(md), "## ExecutePlan with a request_id")
	require.Contains(t, string(md), "(c2) stage4 serve, request_id")
}

// TestRequestIDs: every call gets a new id that the contract accepts.
func TestRequestIDs(t *testing.T) {
	next, other := requestIDs(), requestIDs()
	seen := map[string]bool{}
	valid := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`)
	for range 1000 {
		for _, id := range []string{next(), other()} {
			require.Regexp(t, valid, id)
			require.False(t, seen[id], "id %s twice", id)
			seen[id] = true
		}
	}
}
