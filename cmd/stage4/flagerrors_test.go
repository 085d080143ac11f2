package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBadFlagsSayWhatWasMeant: a bad flag gets a two-line answer, the
// error with the flag probably meant and where the help is, not the
// error above the whole usage; -h still prints the usage.
func TestBadFlagsSayWhatWasMeant(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		want     string
		wantCode int
	}{
		{name: "a typo", args: []string{"serve", "--stage3-adr", "x:1"}, wantCode: exitUsage,
			want: "stage4 serve: unknown flag --stage3-adr; did you mean --stage3-addr?\nRun \"stage4 help serve\" for its flags.\n"},
		{name: "a typo of an audit command", args: []string{"audit", "verify", "--checkpiont", "c", "log"}, wantCode: exitUsage,
			want: "stage4 audit verify: unknown flag --checkpiont; did you mean --checkpoint?\nRun \"stage4 help audit verify\" for its flags.\n"},
		{name: "nothing close", args: []string{"dev", "--frobnicate"}, wantCode: exitUsage,
			want: "stage4 dev: unknown flag --frobnicate\nRun \"stage4 help dev\" for its flags.\n"},
		{name: "a missing value", args: []string{"serve", "--listen"}, wantCode: exitUsage,
			want: "stage4 serve: flag needs an argument: --listen\nRun \"stage4 help serve\" for its flags.\n"},
		{name: "a bad value", args: []string{"serve", "--shutdown-grace", "soon"}, wantCode: exitUsage,
			want: "stage4 serve: invalid value \"soon\" for flag --shutdown-grace: parse error\nRun \"stage4 help serve\" for its flags.\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr strings.Builder
			code := exitCode(run(t.Context(), tt.args, &stdout, &stderr), &stderr)
			require.Equal(t, tt.wantCode, code)
			require.Equal(t, tt.want, stderr.String())
			require.Empty(t, stdout.String())
		})
	}
	var stdout, stderr strings.Builder
	require.Equal(t, exitOK, exitCode(run(t.Context(), []string{"serve", "-h"}, &stdout, &stderr), &stderr))
	require.True(t, strings.HasPrefix(stderr.String(), "Usage: stage4 serve"), "-h prints the usage")
	require.Contains(t, stderr.String(), "--stage3-addr")
}
