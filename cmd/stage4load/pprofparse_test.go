package main

import (
	"bytes"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/server"
)

// TestBreakdownOfARealProfile profiles this process while it computes
// fingerprints, as stage4 does for every plan, and finds that CPU under
// its component. Not parallel: the profile covers the whole process.
func TestBreakdownOfARealProfile(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, pprof.StartCPUProfile(&buf))
	fp := server.NewFingerprinter([]byte("load tool test key"))
	text := strings.Repeat("the quick brown fox ", 50)
	start, err := cpuTime(os.Getpid())
	require.NoError(t, err)
	// Enough CPU for some 50 samples at the profiler's 100 Hz.
	calls := 0
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); calls++ {
		fp.Short(text)
		if calls%1000 == 999 {
			now, err := cpuTime(os.Getpid())
			require.NoError(t, err)
			if now-start >= 500*time.Millisecond {
				break
			}
		}
	}
	pprof.StopCPUProfile()
	p, err := profile.Parse(&buf)
	require.NoError(t, err)

	comps, total, err := breakdown(p, calls)
	require.NoError(t, err)
	require.Len(t, comps, len(componentNames()))
	// sampled is all of the profile's CPU, short the part of it spent in
	// Fingerprinter.Short, both per call in µs.
	var sum, sampled, short float64
	for _, c := range comps {
		sum += c
	}
	for _, s := range p.Sample {
		us := float64(s.Value[1]) / 1e3 / float64(calls) // cpu/nanoseconds
		sampled += us
		if slices.ContainsFunc(s.Location, func(l *profile.Location) bool {
			return slices.ContainsFunc(l.Line, func(line profile.Line) bool {
				return line.Function.Name == "github.com/stage4/stage4/server.(*Fingerprinter).Short"
			})
		}) {
			short += us
		}
	}
	require.Positive(t, short)
	require.InDelta(t, total, sum, 1e-6*total)
	require.InDelta(t, sampled, total, 1e-6*total)
	// Short's samples are fingerprints' unless the stack grew or the
	// collector was assisted on the way (components that come first).
	fps := comps[slices.Index(componentNames(), "plan_id and fingerprints")]
	require.LessOrEqual(t, fps, short+1e-6*short)
	require.Greater(t, fps, 0.75*short, "components %v", comps)

	_, _, err = breakdown(p, 0)
	require.NoError(t, err, "no requests: nothing to divide")
}

// TestBreakdownIsNotForOtherProfiles reads a heap profile as runtime/pprof
// writes it: it has no CPU time to attribute.
func TestBreakdownIsNotForOtherProfiles(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	require.NoError(t, pprof.Lookup("heap").WriteTo(&buf, 0))
	p, err := profile.Parse(&buf)
	require.NoError(t, err)
	_, _, err = breakdown(p, 1)
	require.ErrorContains(t, err, "not a CPU profile")
}

// TestComponentOrder checks which component owns a sample whose stack
// (leaf first) holds functions of several: the first in components' order.
func TestComponentOrder(t *testing.T) {
	t.Parallel()
	const s4 = "github.com/stage4/stage4/"
	tests := []struct {
		name string
		// stack holds locations, leaf first, each its functions, the
		// inlined ones first, as Go's profiles have them.
		stack [][]string
		want  string
	}{
		{name: "validation", stack: [][]string{{"buf.build/go/protovalidate.(*validator).Validate"}, {s4 + "server.Validate"}},
			want: "validation"},
		{name: "stack growth inside validation", stack: [][]string{{"runtime.morestack"}, {s4 + "server.Validate"}},
			want: "stack growth"},
		{name: "validation inside the Stage-3 call", stack: [][]string{{s4 + "server.validateWith"}, {s4 + "stage3client.(*Client).Execute"}},
			want: "validation"},
		{name: "inlined frame", stack: [][]string{{"crypto/sha256.(*Digest).Write", s4 + "server.(*Fingerprinter).sum"}, {"main.main"}},
			want: "plan_id and fingerprints"},
		{name: "unknown", stack: [][]string{{"main.main"}}, want: "other"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			comps, total, err := breakdown(oneSample(tt.stack, 5000), 1)
			require.NoError(t, err)
			require.InDelta(t, 5.0, total, 1e-9)
			i := slices.Index(componentNames(), tt.want)
			require.InDelta(t, 5.0, comps[i], 1e-9, "%s: %v", tt.want, comps)
		})
	}
}

// oneSample is a CPU profile of one sample of nanos on stack.
func oneSample(stack [][]string, nanos int64) *profile.Profile {
	p := &profile.Profile{SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}}}
	s := &profile.Sample{Value: []int64{1, nanos}}
	for _, fns := range stack {
		loc := &profile.Location{ID: uint64(len(p.Location) + 1)}
		for _, name := range fns {
			fn := &profile.Function{ID: uint64(len(p.Function) + 1), Name: name}
			p.Function = append(p.Function, fn)
			loc.Line = append(loc.Line, profile.Line{Function: fn})
		}
		p.Location = append(p.Location, loc)
		s.Location = append(s.Location, loc)
	}
	p.Sample = append(p.Sample, s)
	return p
}
