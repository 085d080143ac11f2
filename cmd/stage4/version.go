package main

import (
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// revision is the VCS revision for builds that Go cannot stamp itself: a
// container build has no .git folder, so the Dockerfile passes
// -ldflags "-X main.revision=...". Go's own vcs.revision wins when present,
// since it also knows whether the tree was modified.
var revision string

const versionUsage = `Usage: stage4 version (or stage4 --version)

Prints the module version, the VCS revision and commit time, whether the
working tree had uncommitted changes, and the Go version, as recorded in the
binary at build time. "go build" records the revision in a git clone (make
build does); go run, -buildvcs=false and git worktrees, whose .git is a
file that Go does not recognise, leave it out.
`

// newVersionFlags declares version's (empty) flag set, for -h.
func newVersionFlags() *flag.FlagSet {
	return newFlagSet("version", versionUsage)
}

// runVersion is the version command.
func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newVersionFlags()
	if err := parseFlags(fs, args, stderr, false); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("version: unexpected arguments %q", fs.Args())
	}
	info, _ := debug.ReadBuildInfo() // nil only in binaries built without module support
	fmt.Fprintln(stdout, versionLine(info, revision))
	return nil
}

// versionLine renders info as one line, for example
//
//	stage4 v0.0.0-20261201050620-41609eaff46f, revision 41609eaff46f403845be7dd773fe1b290a54765f (2026-12-01T05:06:20Z), go1.26.8
//
// fallbackRevision is used when info has no vcs.revision.
func versionLine(info *debug.BuildInfo, fallbackRevision string) string {
	version, goVersion := "(unknown)", "(unknown Go version)"
	settings := map[string]string{}
	if info != nil {
		version, goVersion = info.Main.Version, info.GoVersion
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
	}
	if version == "" {
		version = "(devel)"
	}
	var rev strings.Builder
	switch {
	case settings["vcs.revision"] != "":
		rev.WriteString("revision " + settings["vcs.revision"])
		if t := settings["vcs.time"]; t != "" {
			rev.WriteString(" (" + t + ")")
		}
		if settings["vcs.modified"] == "true" {
			rev.WriteString(" with uncommitted changes")
		}
	case fallbackRevision != "":
		rev.WriteString("revision " + fallbackRevision)
	default:
		rev.WriteString("revision unknown (not stamped: go run, -buildvcs=false, or no git clone to read it from)")
	}
	return fmt.Sprintf("stage4 %s, %s, %s", version, rev.String(), goVersion)
}
