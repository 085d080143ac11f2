package gateway

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// releaseMemoryInterval is the least time between two releases of memory
// after bursts: each costs a full collection.
const releaseMemoryInterval = 10 * time.Second

// memoryReleaser gives the heap that a burst of large requests left behind
// back to the system once the burst is over. The runtime would do it only
// after its next collection, which an idle server may not run for two
// minutes (the forced GC period), keeping the burst's peak resident.
type memoryReleaser struct {
	logger  *slog.Logger
	mu      sync.Mutex
	pending bool      // a release is scheduled
	last    time.Time // end of the last release
}

// afterBurst schedules debug.FreeOSMemory, at once or when
// releaseMemoryInterval has passed since the last release. It does not
// block: it runs on the goroutine of the call that ended the burst.
func (r *memoryReleaser) afterBurst() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending {
		return
	}
	r.pending = true
	time.AfterFunc(max(0, time.Until(r.last.Add(releaseMemoryInterval))), func() {
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		r.logger.Info("returned memory to the system after a burst of large requests",
			"heap_in_use_bytes", ms.HeapInuse, "heap_released_bytes", ms.HeapReleased)
		r.mu.Lock()
		r.pending, r.last = false, time.Now()
		r.mu.Unlock()
	})
}
