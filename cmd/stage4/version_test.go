package main

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVersionLine(t *testing.T) {
	t.Parallel()
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/stage4/stage4", Version: "v0.0.0-20261201050620-41609eaff46f"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "41609eaff46f403845be7dd773fe1b290a54765f"},
			{Key: "vcs.time", Value: "2026-12-01T05:06:20Z"},
			{Key: "vcs.modified", Value: "false"},
		},
	}
	modified := *stamped
	modified.Settings = append(append([]debug.BuildSetting(nil), stamped.Settings[:3]...), debug.BuildSetting{Key: "vcs.modified", Value: "true"})
	unstamped := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/stage4/stage4", Version: "(devel)"}}

	tests := []struct {
		name     string
		info     *debug.BuildInfo
		fallback string
		want     string
	}{
		{
			name: "stamped by go build in a git checkout",
			info: stamped,
			want: "stage4 v0.0.0-20261201050620-41609eaff46f, revision 41609eaff46f403845be7dd773fe1b290a54765f (2026-12-01T05:06:20Z), go1.26.8",
		},
		{
			name: "uncommitted changes",
			info: &modified,
			want: "stage4 v0.0.0-20261201050620-41609eaff46f, revision 41609eaff46f403845be7dd773fe1b290a54765f (2026-12-01T05:06:20Z) with uncommitted changes, go1.26.8",
		},
		{
			name:     "go's stamp wins over the linker's",
			info:     stamped,
			fallback: "0000000",
			want:     "stage4 v0.0.0-20261201050620-41609eaff46f, revision 41609eaff46f403845be7dd773fe1b290a54765f (2026-12-01T05:06:20Z), go1.26.8",
		},
		{
			name:     "container build with the revision from -ldflags",
			info:     unstamped,
			fallback: "41609eaff46f",
			want:     "stage4 (devel), revision 41609eaff46f, go1.26.8",
		},
		{
			name: "no revision at all",
			info: unstamped,
			want: "stage4 (devel), revision unknown (not stamped: go run, -buildvcs=false, or no git clone to read it from), go1.26.8",
		},
		{
			name: "no build information",
			want: "stage4 (unknown), revision unknown (not stamped: go run, -buildvcs=false, or no git clone to read it from), (unknown Go version)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, versionLine(tt.info, tt.fallback))
		})
	}
}
