package main

import (
	"math"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rusageTime is this process's user+system CPU time as getrusage(2)
// counts it: the same clock as /proc/PID/stat, read another way.
func rusageTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
}

// TestProcReadings reads this process's CPU time and memory from /proc.
func TestProcReadings(t *testing.T) {
	t.Parallel()
	pid := os.Getpid()

	before := rusageTime(t)
	cpu, err := cpuTime(pid)
	require.NoError(t, err)
	after := rusageTime(t)
	// /proc counts 10 ms ticks; the two clocks round differently.
	require.GreaterOrEqual(t, cpu, before-50*time.Millisecond)
	require.LessOrEqual(t, cpu, after+50*time.Millisecond)
	require.Zero(t, cpu%(10*time.Millisecond), "whole ticks")

	// 64 MiB, every page touched, is resident while it is alive.
	const size = 64 << 20
	buf := make([]byte, size)
	for i := 0; i < size; i += 4096 {
		buf[i] = 1
	}
	rss, err := rssKiB(pid)
	require.NoError(t, err)
	peak, err := peakRSSKiB(pid)
	require.NoError(t, err)
	runtime.KeepAlive(buf)
	require.GreaterOrEqual(t, rss, int64(size>>10), "KiB, and the buffer is in it")
	require.Less(t, rss, int64(4<<20), "KiB, not bytes: under 4 GiB")
	require.GreaterOrEqual(t, peak, rss)

	_, err = cpuTime(math.MaxInt32)
	require.Error(t, err, "no such process")
	_, err = rssKiB(math.MaxInt32)
	require.Error(t, err, "no such process")

	fsync, err := measureFsync(t.TempDir(), 3)
	require.NoError(t, err)
	require.Positive(t, fsync)
}
