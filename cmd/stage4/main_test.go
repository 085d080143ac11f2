package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// stage4Bin is the real binary, built once for every test in TestMain.
var stage4Bin string

// buildFlags are the go build flags of stage4Bin; race_test.go adds -race
// so that the binary is checked too when the tests run under -race.
var buildFlags []string

// waitTimeout bounds every wait on a child process, so that a hung binary
// fails the test instead of hanging it.
const waitTimeout = 60 * time.Second

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "stage4-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "make temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	stage4Bin = filepath.Join(dir, "stage4")
	args := append([]string{"build", "-o", stage4Bin}, buildFlags...)
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build stage4: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// lines collects a child's output and lets tests wait for a line.
type lines struct {
	mu      sync.Mutex
	buf     []byte
	lines   []string
	changed chan struct{} // closed and replaced whenever lines grows or closes
	closed  bool
}

func newLines() *lines { return &lines{changed: make(chan struct{})} }

// Write implements io.Writer, splitting the output into lines.
func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

func (l *lines) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.lines = append(l.lines, string(l.buf))
		l.buf = nil
	}
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
}

// String returns everything written so far.
func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n") + string(l.buf)
}

// waitFor returns the first line, from the start, that match accepts; it
// fails the test when the output ends or the timeout passes first.
func (l *lines) waitFor(t *testing.T, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for i := 0; ; {
		l.mu.Lock()
		for ; i < len(l.lines); i++ {
			if match(l.lines[i]) {
				line := l.lines[i]
				l.mu.Unlock()
				return line
			}
		}
		closed, changed := l.closed, l.changed
		l.mu.Unlock()
		if closed {
			t.Fatalf("output ended before %s:\n%s", what, l.String())
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s:\n%s", what, l.String())
		}
	}
}

// waitForLog waits for a JSON log line whose msg is msg and whose other
// fields include want, and returns its fields.
func (l *lines) waitForLog(t *testing.T, msg string, want map[string]any) map[string]any {
	t.Helper()
	var fields map[string]any
	l.waitFor(t, fmt.Sprintf("log %q %v", msg, want), func(line string) bool {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != msg {
			return false
		}
		for k, v := range want {
			if m[k] != v {
				return false
			}
		}
		fields = m
		return true
	})
	return fields
}

// proc is a running stage4 child process.
type proc struct {
	cmd    *exec.Cmd
	stdout *lines
	stderr *lines
	done   chan struct{} // closed when the process has exited
	err    error         // Wait's result, valid after done
}

// start runs stage4 with args and env added to a clean environment (no
// STAGE4_ variables leak in from the developer's shell). It is killed at
// the end of the test if still running.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startIn(t, "", env, args...)
}

// startIn is start in the working directory dir ("" for the test's own),
// for the defaults that are relative paths.
func startIn(t *testing.T, dir string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(stage4Bin, args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	p := &proc{cmd: cmd, stdout: newLines(), stderr: newLines(), done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	require.NoError(t, cmd.Start())
	go func() {
		p.err = cmd.Wait()
		p.stdout.close()
		p.stderr.close()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("stage4 %s stderr:\n%s", strings.Join(args, " "), p.stderr.String())
		}
	})
	return p
}

// servingAddr waits for the "serving" log line and returns the bound gRPC
// address, and the metrics address when there is one.
func (p *proc) servingAddr(t *testing.T) (grpcAddr, metricsAddr string) {
	t.Helper()
	fields := p.stderr.waitForLog(t, "serving", nil)
	grpcAddr, _ = fields["grpc_addr"].(string)
	metricsAddr, _ = fields["metrics_addr"].(string)
	require.NotEmpty(t, grpcAddr)
	return grpcAddr, metricsAddr
}

// exitCode waits for the process to exit and returns its status.
func (p *proc) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatalf("stage4 did not exit:\n%s", p.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, p.err)
	return 0
}

// runStage4 runs a short-lived stage4 command and returns its exit status
// and output.
func runStage4(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := start(t, env, args...)
	code = p.exitCode(t)
	return code, p.stdout.String(), p.stderr.String()
}

// cleanEnv is the test process's environment without STAGE4_ variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return env
}
