package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a throwaway PostgreSQL cluster in a temporary directory, made
// with the machine's initdb and pg_ctl, for tests that stop and start the
// database under a store. It listens on loopback only, with trust
// authentication, and is destroyed when the test ends.
type Cluster struct {
	t      testing.TB
	bin    string
	dir    string
	port   int
	asUser string // run the server as this user (postgres when we are root)
}

// StartCluster creates and starts a cluster. Without initdb on the machine
// the test is skipped (or fails under CI=true, see Unavailable).
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	bin := findBinDir()
	if bin == "" {
		Unavailable(t, "no PostgreSQL server binaries (initdb, pg_ctl) found in PATH or /usr/lib/postgresql/*/bin")
	}
	dir, err := os.MkdirTemp("", "stage4-pgcluster-")
	if err != nil {
		t.Fatalf("cluster dir: %v", err)
	}
	c := &Cluster{t: t, bin: bin, dir: dir}
	t.Cleanup(func() {
		c.stop("immediate") // a no-op when the test stopped it already
		os.RemoveAll(dir)
	})
	// PostgreSQL refuses to run as root, so a root test runs it as postgres,
	// which must own the directory.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			Unavailable(t, "running as root and there is no postgres user to run a cluster as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatalf("chown cluster dir: %v", err)
		}
		c.asUser = "postgres"
	}
	c.port = freePort(t)
	c.run("initdb", "-D", c.dataDir(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	c.Start()
	return c
}

// URL is the URL of the cluster's postgres database.
func (c *Cluster) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

// Start starts the cluster and returns once it accepts connections.
func (c *Cluster) Start() {
	c.t.Helper()
	c.run("pg_ctl", "-D", c.dataDir(), "-l", filepath.Join(c.dir, "server.log"), "-w", "-t", "30",
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", c.port, c.dir), "start")
	// pg_ctl -w waits for the server; a connection proves it from our side.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, c.URL())
		if err == nil {
			conn.Close(ctx)
			return
		}
		if ctx.Err() != nil {
			c.t.Fatalf("cluster did not come up: %v", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // polling for "is it up" with a deadline
		}
	}
}

// Stop stops the cluster the way a crash would (mode immediate: no
// checkpoint, every connection cut), and returns once it is down.
func (c *Cluster) Stop() {
	c.t.Helper()
	if err := c.stop("immediate"); err != nil {
		c.t.Fatalf("stop cluster: %v", err)
	}
}

func (c *Cluster) stop(mode string) error {
	if _, err := os.Stat(filepath.Join(c.dataDir(), "postmaster.pid")); err != nil {
		return nil // not running
	}
	out, err := c.command("pg_ctl", "-D", c.dataDir(), "-m", mode, "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }

func (c *Cluster) run(name string, args ...string) {
	c.t.Helper()
	if out, err := c.command(name, args...).CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.dir, "server.log"))
		c.t.Fatalf("%s: %v\n%s\nserver log:\n%s", name, err, out, log)
	}
}

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(c.bin, name)
	if c.asUser != "" {
		return exec.Command("runuser", append([]string{"-u", c.asUser, "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

// findBinDir finds the directory of initdb and pg_ctl: PATH first (where a
// developer's own installation is), then Debian's versioned directories,
// newest first.
func findBinDir() string {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	return ""
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// freePort asks the kernel for a free loopback port. Another process could
// take it before the cluster binds it; on a test machine that is rare
// enough, and the cluster's start then fails loudly rather than silently.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
