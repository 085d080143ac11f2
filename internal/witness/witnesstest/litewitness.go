// Package witnesstest runs real witnesses for tests: litewitness, the
// c2sp.org/tlog-witness server of filippo.io/torchwood, configured with
// its witnessctl, both Go tools of the module (go.mod's tool lines) built
// by go tool; each with an ssh-agent of its own that holds a fresh Ed25519
// key made by ssh-keygen. Log is an in-memory log to cosign.
//
// Tests that use it skip, saying how to run them, where ssh-agent,
// ssh-keygen or ssh-add is missing (Debian's openssh-client has them),
// and fail instead under CI=true. It is imported by tests only.
package witnesstest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/mod/sumdb/note"
)

// Timeouts of the helper's waits, so that a hung process fails the test
// instead of hanging it.
const (
	// buildTimeout bounds go tool -n: the first build of litewitness (its
	// SQLite is a large pure-Go package) takes a minute on a 2-core
	// machine; later ones come from the build cache.
	buildTimeout = 5 * time.Minute
	// startTimeout bounds the wait for ssh-agent's socket and for
	// litewitness to listen.
	startTimeout = 30 * time.Second
	// stopTimeout bounds the wait for a process to exit after a signal,
	// before it is killed.
	stopTimeout = 10 * time.Second
	// pollInterval is how often a start is checked.
	pollInterval = 10 * time.Millisecond
)

// Unavailable ends the test because it cannot run here: a skip that says
// how to run it, or a failure under CI=true.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: the litewitness tests must run in CI)", msg)
	}
	t.Skipf("%s; to run this test, install OpenSSH's client tools (apt-get install openssh-client)", msg)
}

// binaries are the paths of the built tools.
var binaries struct {
	once                    sync.Once
	litewitness, witnessctl string
	err                     error
}

// tools returns the paths of litewitness and witnessctl, built once per
// test binary into the Go build cache by go tool -n (which builds the
// module's tools at the versions go.mod pins, from the module proxy).
func tools(t testing.TB) (litewitness, witnessctl string) {
	t.Helper()
	binaries.once.Do(func() {
		goCmd, err := exec.LookPath("go")
		if err != nil {
			binaries.err = fmt.Errorf("the go command is not on PATH: %w", err)
			return
		}
		build := func(tool string) string {
			if binaries.err != nil {
				return ""
			}
			ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
			defer cancel()
			var stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, goCmd, "tool", "-n", tool)
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				binaries.err = fmt.Errorf("go tool -n %s: %w\n%s", tool, err, stderr.Bytes())
				return ""
			}
			return strings.TrimSpace(string(out))
		}
		binaries.litewitness = build("litewitness")
		binaries.witnessctl = build("witnessctl")
	})
	if binaries.err != nil {
		t.Fatalf("build the witness tools: %v", binaries.err)
	}
	return binaries.litewitness, binaries.witnessctl
}

// Litewitness is a running litewitness.
type Litewitness struct {
	// Name is the witness's name, its cosignature key's name.
	Name string
	// Key is its Ed25519 public key.
	Key ed25519.PublicKey
	// URL is where it listens (its submission prefix), on loopback.
	URL string

	witnessctl string
	db         string
	proc       *process
}

// Start starts a litewitness named name that knows the logs whose note
// verifier keys (<origin>+<hash>+<key>) are logKeys, and stops it when the
// test ends. Its key is a fresh Ed25519 key in an ssh-agent of its own;
// it listens on a free loopback port and answers before Start returns.
func Start(t testing.TB, name string, logKeys ...string) *Litewitness {
	t.Helper()
	for _, tool := range []string{"ssh-agent", "ssh-keygen", "ssh-add"} {
		if _, err := exec.LookPath(tool); err != nil {
			Unavailable(t, "litewitness needs %s: %v", tool, err)
		}
	}
	litewitness, witnessctl := tools(t)
	// A short directory of its own: a Unix socket's path has at most 107
	// bytes, which t.TempDir's can exceed.
	dir, err := os.MkdirTemp("", "lw-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	w := &Litewitness{Name: name, witnessctl: witnessctl, db: filepath.Join(dir, "litewitness.db")}

	sock := filepath.Join(dir, "agent.sock")
	agent := startProcess(t, "ssh-agent", syscall.SIGTERM, "ssh-agent", "-D", "-a", sock)
	waitUntil(t, agent, "ssh-agent's socket", func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	keyFile := filepath.Join(dir, "witness-key")
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", keyFile)
	cmd := exec.Command("ssh-add", "-q", keyFile)
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
	pubLine, err := os.ReadFile(keyFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(pubLine)
	if err != nil {
		t.Fatalf("parse %s.pub: %v", keyFile, err)
	}
	w.Key = pub.(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey)

	for _, k := range logKeys {
		w.AddLog(t, k)
	}
	w.start(t, litewitness, sock, ssh.FingerprintSHA256(pub))
	return w
}

// start starts litewitness on a free port and waits until it listens.
// The port is found by listening on port 0 and closing: another process
// may take it in between, so a start that fails on the address is tried
// again on another.
func (w *Litewitness) start(t testing.TB, litewitness, sock, fingerprint string) {
	t.Helper()
	for try := 1; ; try++ {
		addr := freeAddr(t)
		p := startProcess(t, "litewitness", os.Interrupt, litewitness,
			"-db", w.db, "-name", w.Name, "-ssh-agent", sock, "-key", fingerprint, "-listen", addr)
		up := waitUntilOrExit(t, p, "litewitness to listen on "+addr, func() bool {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		if up {
			w.URL, w.proc = "http://"+addr, p
			return
		}
		if try == 3 || !strings.Contains(p.output(), "address already in use") {
			t.Fatalf("litewitness exited before it listened:\n%s", p.output())
		}
	}
}

// AddLog makes the witness know the log whose note verifier key is vkey
// (witnessctl add-log and add-key), starting from an empty tree. It may be
// called while the witness runs.
func (w *Litewitness) AddLog(t testing.TB, vkey string) {
	t.Helper()
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatalf("log key %q: %v", vkey, err)
	}
	run(t, w.witnessctl, "add-log", "-db", w.db, "-origin", v.Name())
	run(t, w.witnessctl, "add-key", "-db", w.db, "-origin", v.Name(), "-key", vkey)
}

// LogSize returns the size of the latest tree of the log origin that the
// witness cosigned (witnessctl list-logs), and whether it knows the log.
func (w *Litewitness) LogSize(t testing.TB, origin string) (uint64, bool) {
	t.Helper()
	out := run(t, w.witnessctl, "list-logs", "-db", w.db)
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var l struct {
			Origin string `json:"origin"`
			Size   uint64 `json:"size"`
		}
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("witnessctl list-logs: %v\n%s", err, out)
		}
		if l.Origin == origin {
			return l.Size, true
		}
	}
	return 0, false
}

// PolicyLine returns the witness's line in a witness policy:
// witness NAME PUBKEY-HEX URL.
func (w *Litewitness) PolicyLine() string {
	return fmt.Sprintf("witness %s %s %s", w.Name, hex.EncodeToString(w.Key), w.URL)
}

// Output returns what litewitness has printed so far (its log).
func (w *Litewitness) Output() string { return w.proc.output() }

// Stop stops the witness, as an outage would: requests to its URL are
// refused from then on. The test's end stops it too.
func (w *Litewitness) Stop(t testing.TB) {
	t.Helper()
	w.proc.stop(t)
}

// process is a child process whose output is kept for the test's log.
type process struct {
	name   string
	stopBy os.Signal // the signal it exits cleanly on
	cmd    *exec.Cmd
	exited chan struct{} // closed when it has exited
	out    lockedBuffer
	once   sync.Once
}

// startProcess starts a command and stops it with stopBy when the test
// ends, logging its output if the test failed.
func startProcess(t testing.TB, name string, stopBy os.Signal, path string, args ...string) *process {
	t.Helper()
	p := &process{name: name, stopBy: stopBy, exited: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.cmd.Wait() // its status says nothing the output does not
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.output())
		}
	})
	return p
}

// stop signals the process to exit and waits for it; one that does not
// exit within stopTimeout is killed. Calls after the first do nothing.
func (p *process) stop(t testing.TB) {
	p.once.Do(func() {
		p.cmd.Process.Signal(p.stopBy)
		select {
		case <-p.exited:
			return
		case <-time.After(stopTimeout):
		}
		t.Errorf("%s did not exit within %v of %v; killing it", p.name, stopTimeout, p.stopBy)
		p.cmd.Process.Kill()
		<-p.exited
	})
}

func (p *process) output() string { return p.out.String() }

// waitUntil polls ready until it holds, failing the test when the process
// exits first or startTimeout passes.
func waitUntil(t testing.TB, p *process, what string, ready func() bool) {
	t.Helper()
	if !waitUntilOrExit(t, p, what, ready) {
		t.Fatalf("%s exited while waiting for %s:\n%s", p.name, what, p.output())
	}
}

// waitUntilOrExit polls ready until it holds (true) or the process exits
// (false); it fails the test when startTimeout passes first.
func waitUntilOrExit(t testing.TB, p *process, what string, ready func() bool) bool {
	t.Helper()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if ready() {
			return true
		}
		select {
		case <-p.exited:
			return ready()
		case <-deadline.C:
			t.Fatalf("waited %v for %s:\n%s", startTimeout, what, p.output())
		case <-tick.C:
		}
	}
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// run runs a command to its end and returns its standard output, failing
// the test with its output if it fails.
func run(t testing.TB, path string, args ...string) []byte {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(path), strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}

// lockedBuffer is a bytes.Buffer that a process's output and a test's
// reads may share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
