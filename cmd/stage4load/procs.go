package main

import (
	"bytes"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

// cpuTime returns the user+system CPU time that process pid has used so
// far: utime+stime of /proc/PID/stat, whole 10 ms ticks.
func cpuTime(pid int) (time.Duration, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	st, err := p.Stat()
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	// Rounded to the nanosecond, ticks subtract exactly.
	return time.Duration(math.Round(st.CPUTime() * float64(time.Second))), nil
}

// rssKiB returns the resident set size (VmRSS) of process pid in KiB.
func rssKiB(pid int) (int64, error) {
	st, err := procStatus(pid)
	return int64(st.VmRSS >> 10), err
}

// peakRSSKiB returns the high-water mark of the resident set size (VmHWM,
// the kernel's own) of process pid in KiB.
func peakRSSKiB(pid int) (int64, error) {
	st, err := procStatus(pid)
	return int64(st.VmHWM >> 10), err
}

// procStatus reads /proc/PID/status.
func procStatus(pid int) (procfs.ProcStatus, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procfs.ProcStatus{}, fmt.Errorf("read memory: %w", err)
	}
	st, err := p.NewStatus()
	if err != nil {
		return procfs.ProcStatus{}, fmt.Errorf("read memory: %w", err)
	}
	return st, nil
}

// freeAddr returns a loopback address with a port that was free a moment
// ago. The child process binds it; the small race is acceptable for a
// benchmark on a quiet machine.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find free port: %w", err)
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// checkLoopback refuses any address that is not on 127.0.0.1: load must
// never leave the machine.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if host != "127.0.0.1" {
		return fmt.Errorf("address %q: only 127.0.0.1 is allowed", addr)
	}
	return nil
}

// child is a spawned server process: Stage-3, the proxy or stage4.
type child struct {
	name    string
	addr    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, set before done is closed
}

// spawn starts bin with args, its stdout and stderr going to logPath, and
// waits until addr accepts TCP connections.
func spawn(name, addr, logPath, bin string, args ...string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Children die with the load tool, so no server outlives a crashed run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, addr: addr, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	if err := c.waitReady(15 * time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// pid is the child's process id, for /proc.
func (c *child) pid() int { return c.cmd.Process.Pid }

// waitReady polls until the child accepts connections. Polling is the only
// readiness signal a foreign process offers; the loop is bounded by timeout.
func (c *child) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			return fmt.Errorf("%s exited before serving (%v); log:\n%s", c.name, c.err, c.logTail())
		default:
		}
		conn, err := net.DialTimeout("tcp", c.addr, 100*time.Millisecond)
		if err == nil {
			return conn.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not serving on %s after %v; log:\n%s", c.name, c.addr, timeout, c.logTail())
}

// alive reports an error when the child has exited early.
func (c *child) alive() error {
	select {
	case <-c.done:
		return fmt.Errorf("%s exited during the run (%v); log:\n%s", c.name, c.err, c.logTail())
	default:
		return nil
	}
}

// stop asks the child to shut down with SIGTERM and kills it after 5 s.
func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// logTail returns the last 2 KiB of the child's log, for error messages.
func (c *child) logTail() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(b)
}

// fsyncSamples is how many appends measureFsync times: enough for a stable
// median, at about 1 ms each on a slow virtual disk.
const fsyncSamples = 200

// measureFsync times n appends of one audit-record-sized line followed by
// fsync, in dir (where stage4's audit log lives), and returns the median.
// The latency target is stated in fsyncs, so the report needs this
// machine's price of one.
func measureFsync(dir string, n int) (time.Duration, error) {
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return 0, fmt.Errorf("fsync probe: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	line := append(bytes.Repeat([]byte("x"), 511), '\n')
	lats := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if _, err := f.Write(line); err != nil {
			return 0, fmt.Errorf("fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			return 0, fmt.Errorf("fsync probe: %w", err)
		}
		lats = append(lats, time.Since(t0))
	}
	slices.Sort(lats)
	return percentile(lats, 0.5), nil
}
