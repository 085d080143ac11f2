package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/procfs"
)

// The PostgreSQL server of (d) and (e): the one the tests use.
const (
	envPGURL     = "STAGE4_TEST_POSTGRES_URL"
	pgDefaultURL = "postgres://postgres@127.0.0.1:5432/postgres"
)

// defaultPGURL is $STAGE4_TEST_POSTGRES_URL, else the project machines'
// server.
func defaultPGURL() string {
	if u := os.Getenv(envPGURL); u != "" {
		return u
	}
	return pgDefaultURL
}

// pgTimeout bounds each administrative statement (create, drop, describe).
const pgTimeout = 30 * time.Second

// createDatabase creates an empty database with a random name on the
// server of serverURL (a URL naming a database that exists, used only to
// connect) and returns its URL and a function that drops it.
func createDatabase(ctx context.Context, serverURL string) (dbURL string, drop func() error, err error) {
	ctx, cancel := context.WithTimeout(ctx, pgTimeout)
	defer cancel()
	u, err := url.Parse(serverURL)
	if err != nil {
		return "", nil, fmt.Errorf("--postgres-url: %w", err)
	}
	admin, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return "", nil, fmt.Errorf("PostgreSQL not reachable at %s (--postgres-url, or $%s): %w; "+
			"start it, or leave PostgreSQL out with --pg-concurrency '' (PG_CONCURRENCY= make bench)", u.Redacted(), envPGURL, err)
	}
	defer admin.Close(context.Background())
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	name := "stage4load_" + hex.EncodeToString(b)
	// The name is ours and safe to splice: a prefix and hex digits.
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("create benchmark database: %w", err)
	}
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
		defer cancel()
		c, err := pgx.Connect(ctx, serverURL)
		if err != nil {
			return fmt.Errorf("drop benchmark database %s: %w", name, err)
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop benchmark database %s: %w", name, err)
		}
		return nil
	}
	u.Path = "/" + name
	return u.String(), drop, nil
}

// pgBackendFinder returns a function that lists the process ids of the
// client sessions on a database of the server of serverURL, so that the
// benchmark can charge their CPU to the configuration that uses them. It
// lists nothing when the server is not on this machine (its pids would
// name other processes here). close ends its connection.
func pgBackendFinder(serverURL string) (find func(dbURL string) []int, close func() error, err error) {
	u, err := url.Parse(serverURL)
	if err != nil {
		return nil, nil, fmt.Errorf("--postgres-url: %w", err)
	}
	if !onLoopback(u) {
		return func(string) []int { return nil }, func() error { return nil }, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return nil, nil, fmt.Errorf("PostgreSQL not reachable at %s (--postgres-url, or $%s): %w; "+
			"start it, or leave PostgreSQL out with --pg-concurrency '' (PG_CONCURRENCY= make bench)", u.Redacted(), envPGURL, err)
	}
	var mu sync.Mutex
	find = func(dbURL string) []int {
		mu.Lock()
		defer mu.Unlock()
		du, err := url.Parse(dbURL)
		if err != nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
		defer cancel()
		rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity
			WHERE datname = $1 AND backend_type = 'client backend'`, strings.TrimPrefix(du.Path, "/"))
		if err != nil {
			return nil // CPU not charged: the report shows none for postgres
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return nil
		}
		var out []int
		for _, pid := range pids {
			// A server in a container shares loopback but not pids.
			p, err := procfs.NewProc(int(pid))
			if err != nil {
				continue
			}
			if comm, err := p.Comm(); err == nil && comm == "postgres" {
				out = append(out, int(pid))
			}
		}
		return out
	}
	return find, func() error { return conn.Close(context.Background()) }, nil
}

// onLoopback reports whether the server of u is on this machine's loopback.
func onLoopback(u *url.URL) bool {
	h := u.Hostname()
	return h == "127.0.0.1" || h == "localhost" || h == "::1"
}

// pgInfo describes the PostgreSQL side of a run.
type pgInfo struct {
	// Server is version() of the server.
	Server string `json:"server"`
	// Settings are the server settings that decide what a commit costs.
	Settings map[string]string `json:"settings"`
	// Verified is what "stage4 audit verify URL" printed for the log of
	// (d) and of (e) after the run.
	Verified []string `json:"verified"`
}

// pgSettings are the settings pgInfo records.
var pgSettings = []string{"synchronous_commit", "fsync", "wal_sync_method", "commit_delay", "shared_buffers", "max_connections"}

// describePG reads the server's version and settings and verifies the
// logs that (d) and (e) wrote, with the stage4 binary as an operator
// would: a benchmark that left a damaged log measured the wrong thing.
func describePG(ctx context.Context, cfg config, e env, progress io.Writer) (*pgInfo, error) {
	info := &pgInfo{Settings: map[string]string{}}
	qctx, cancel := context.WithTimeout(ctx, pgTimeout)
	defer cancel()
	conn, err := pgx.Connect(qctx, e.pgDatabases[0])
	if err != nil {
		return nil, fmt.Errorf("describe PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(qctx, "SELECT version()").Scan(&info.Server); err != nil {
		return nil, fmt.Errorf("describe PostgreSQL: %w", err)
	}
	for _, name := range pgSettings {
		var v string
		// The names are constants of this file.
		if err := conn.QueryRow(qctx, "SHOW "+name).Scan(&v); err != nil {
			return nil, fmt.Errorf("describe PostgreSQL: %w", err)
		}
		info.Settings[name] = v
	}
	for i, db := range e.pgDatabases {
		began := time.Now()
		out, err := exec.CommandContext(ctx, cfg.stage4Bin, "audit", "verify", db).CombinedOutput()
		line := strings.TrimSpace(string(out))
		if err != nil {
			return nil, fmt.Errorf("audit verify of the log of %s: %w: %s", pgConfigs[i], err, line)
		}
		fmt.Fprintf(progress, "audit verify %s: %s (%v)\n", pgConfigs[i], line, time.Since(began).Round(time.Millisecond))
		info.Verified = append(info.Verified, fmt.Sprintf("%s: %s", pgConfigs[i], line))
	}
	return info, nil
}

// pgConfigs are the configurations on PostgreSQL, in the order of their
// databases.
var pgConfigs = []string{cfgStage4PG, cfgStage4PG2}
