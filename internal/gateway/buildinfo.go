package gateway

import (
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// buildInfo is stage4_build_info: always 1, its labels say which build
// runs (the module version, the VCS revision, whether the tree had
// uncommitted changes, the Go version), so that dashboards can tell
// replicas of different builds apart during a rollout. fallbackRevision is
// the revision when the binary has no vcs.revision of Go's (a container
// build, which stamps it with -ldflags -X).
func buildInfo(fallbackRevision string) prometheus.Collector {
	version, revision, modified, goVersion := "(devel)", fallbackRevision, "", "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		goVersion = info.GoVersion
		if info.Main.Version != "" {
			version = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
	}
	if revision == "" {
		revision = "unknown"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "stage4_build_info",
		Help: "Always 1; the labels name the running build: module version, VCS revision, uncommitted changes (vcs_modified), Go version.",
		ConstLabels: prometheus.Labels{
			"version": version, "revision": revision, "vcs_modified": modified, "go_version": goVersion,
		},
	})
	g.Set(1)
	return g
}
