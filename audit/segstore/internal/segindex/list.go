package segindex

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// RunInfo describes a run file: its path, the records First..Last it covers
// and its number of entries. A stale temporary file has only a Path.
type RunInfo struct {
	Path        string
	First, Last uint64
	Count       uint64
}

// Info returns the run's description as ListRuns gives it, for PlanMerge.
func (r *Run) Info() RunInfo {
	return RunInfo{Path: r.path, First: r.first, Last: r.last, Count: r.count}
}

// ListRuns reads the run files in dir and sorts them into the live runs,
// ordered by First and not overlapping, and the stale files to remove. Stale
// are: temporary files a crash left behind, runs a larger run covers (the
// inputs of a merge that a crash kept from being removed), and runs whose
// header does not match their name or size. Live runs may leave gaps, the
// records of segments whose runs are missing, for the store to rebuild.
// Other files are ignored. Call it when no run is being written: the
// temporary file of a write in progress would be reported stale.
func ListRuns(dir string) (live, stale []RunInfo, err error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("list index runs: %w", err)
	}
	var runs []RunInfo
	for _, de := range des {
		name := de.Name()
		path := filepath.Join(dir, name)
		if !de.Type().IsRegular() {
			continue
		}
		if i := strings.Index(name, runSuffix+tmpInfix); i >= 0 {
			if _, _, ok := parseRunName(name[:i+len(runSuffix)]); ok {
				stale = append(stale, RunInfo{Path: path})
			}
			continue
		}
		if _, _, ok := parseRunName(name); !ok {
			continue
		}
		info, err := readInfo(path)
		switch {
		case errors.Is(err, ErrCorrupt):
			stale = append(stale, RunInfo{Path: path})
		case err != nil:
			return nil, nil, fmt.Errorf("list index runs: %w", err)
		default:
			runs = append(runs, info)
		}
	}

	// Widest first among runs that start together, so that one sweep keeps
	// every run not inside an earlier kept one. Runs only partly overlapping
	// a kept one do not arise (a merge replaces whole runs); if one did, it
	// is dropped too and the part it alone covered becomes a gap.
	slices.SortFunc(runs, func(a, b RunInfo) int {
		return cmp.Or(cmp.Compare(a.First, b.First), cmp.Compare(b.Last, a.Last))
	})
	var covered uint64 // the Last of the last live run
	for _, r := range runs {
		if r.First > covered {
			live = append(live, r)
			covered = r.Last
		} else {
			stale = append(stale, r)
		}
	}
	return live, stale, nil
}

// readInfo reads and checks a run file's header.
func readInfo(path string) (RunInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return RunInfo{}, err
	}
	defer f.Close()
	r, err := readHeader(f, path)
	if err != nil {
		return RunInfo{}, fmt.Errorf("%s: %w", path, err)
	}
	return r.Info(), nil
}
