package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"

	"github.com/agnivade/levenshtein"
)

// envPrefix starts the environment variable that backs a serve flag:
// --stage3-addr falls back to STAGE4_STAGE3_ADDR.
const envPrefix = "STAGE4_"

// newFlagSet returns a FlagSet whose -h output is summary followed by the
// flag defaults. ContinueOnError lets run, not the flag package, choose the
// exit status.
func newFlagSet(name, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), summary)
		var hasFlags bool
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprint(fs.Output(), "\nFlags:\n")
			printDefaults(fs)
		}
	}
	return fs
}

// printDefaults is flag.PrintDefaults with two dashes: the README, the
// usage texts and the error messages all write flags as --name (the flag
// package accepts one dash or two), and help should not be the one place
// that writes -name.
func printDefaults(fs *flag.FlagSet) {
	w := fs.Output()
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if typ != "" {
			fmt.Fprintf(w, " %s", typ)
		}
		fmt.Fprintf(w, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		// Every flag here is declared with fs.XxxVar, whose values are
		// Getters; a zero default is left unsaid, as the flag package does.
		if g, ok := f.Value.(flag.Getter); ok && !reflect.ValueOf(g.Get()).IsZero() {
			if _, isString := g.Get().(string); isString {
				fmt.Fprintf(w, " (default %q)", f.DefValue)
			} else {
				fmt.Fprintf(w, " (default %v)", f.DefValue)
			}
		}
		fmt.Fprint(w, "\n")
	})
}

// parseFlags parses args into fs, printing errors and usage to stderr. -h
// ends the command with status 0, a bad flag with status 2. With useEnv,
// every flag not given on the command line takes the value of its
// environment variable when that is set (even to ""), so that deployments
// can configure the server without a wrapper script: flags win over the
// environment, which wins over defaults.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer, useEnv bool) error {
	// The flag package prints a parse error above the whole usage, which
	// buries it (serve's is 80 lines): say the error alone, with the flag
	// that was probably meant, and where the usage is.
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return silentExit(exitOK)
		}
		fmt.Fprintf(stderr, "stage4 %s: %s\nRun \"stage4 help %s\" for its flags.\n", fs.Name(), describeFlagError(fs, err), fs.Name())
		return silentExit(exitUsage)
	}
	if !useEnv {
		return nil
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return usageError("%s: %w", fs.Name(), err)
	}
	return nil
}

// describeFlagError rewrites the flag package's error for an undefined
// flag as the README writes flags (--name), with the closest defined flag
// when one is close enough to be a typo.
func describeFlagError(fs *flag.FlagSet, err error) string {
	const undefined = "flag provided but not defined: -"
	msg := err.Error()
	name, ok := strings.CutPrefix(msg, undefined)
	if !ok {
		return strings.NewReplacer("for flag -", "for flag --", "argument: -", "argument: --").Replace(msg)
	}
	msg = "unknown flag --" + name
	best, bestDist := "", len(name)/3+2 // a typo changes a few letters, not a third of them
	fs.VisitAll(func(f *flag.Flag) {
		if d := levenshtein.ComputeDistance(name, f.Name); d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	if best != "" {
		msg += "; did you mean --" + best + "?"
	}
	return msg
}

// envName is the environment variable backing flag name.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// commandFlagSets returns a fresh FlagSet per command, for "stage4 help CMD".
func commandFlagSets() map[string]*flag.FlagSet {
	serveFS, _ := newServeFlags()
	devFS, _ := newDevFlags()
	refFS, _ := newReferenceStage3Flags()
	verifyFS, _ := newAuditVerifyFlags()
	keygenFS, _ := newAuditKeygenFlags()
	proveFS, _ := newAuditProveFlags()
	checkpointFS, _ := newAuditCheckpointFlags()
	monitorFS, _ := newAuditMonitorFlags()
	return map[string]*flag.FlagSet{
		"serve":            serveFS,
		"dev":              devFS,
		"validate":         newValidateFlags(),
		"audit verify":     verifyFS,
		"audit keygen":     keygenFS,
		"audit prove":      proveFS,
		"audit checkpoint": checkpointFS,
		"audit monitor":    monitorFS,
		"audit":            newFlagSet("audit", auditUsage),
		"reference-stage3": refFS,
		"version":          newVersionFlags(),
	}
}
