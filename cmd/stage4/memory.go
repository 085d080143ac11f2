package main

import (
	"os"
	"runtime/debug"
)

// defaultMemoryLimit is the Go runtime's soft memory limit unless GOMEMLIMIT
// is set: with GOGC=400 the heap may otherwise grow to five times what is
// live, so a burst of large requests took over 1 GiB; near the limit the
// collector works harder instead (see docs/DESIGN.md, "Memory under a
// burst").
const defaultMemoryLimit = 512 << 20

// setDefaultMemoryLimit applies defaultMemoryLimit unless the environment
// chose one: an explicit GOMEMLIMIT wins, as GOGC does.
func setDefaultMemoryLimit() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}
