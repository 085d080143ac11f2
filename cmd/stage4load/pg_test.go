package main

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// TestMeasureAllWithPostgres runs the tool's core with (d) and (e) at one
// of two concurrencies, proxies standing in for the stage4 processes: (d)
// and (e) run only there, right after (c), and are compared with it.
func TestMeasureAllWithPostgres(t *testing.T) {
	ref := startStage3(t, stage3ref.DefaultTokens())
	pid := os.Getpid()
	e := env{
		direct:       stage3v1.NewStage3ServiceClient(dial(t, ref.Addr)),
		proxy:        startProxy(t, ref.Addr),
		stage4:       startProxy(t, ref.Addr),
		stage4PG:     startProxy(t, ref.Addr),
		stage4PG2:    []stage4v1.Stage4ServiceClient{startProxy(t, ref.Addr), startProxy(t, ref.Addr)},
		stage3PID:    pid,
		proxyPID:     pid,
		stage4PID:    pid,
		stage4PGPID:  pid,
		stage4PG2PID: []int{pid, pid},
		// This process stands in for the database's sessions too.
		pgBackends: func(string) []int { return []int{pid} },
	}
	dir := t.TempDir()
	cfg := config{
		concurrency:   []int{1, 4},
		pgConcurrency: []int{4},
		rounds:        2,
		warmup:        5 * time.Millisecond,
		measure:       30 * time.Millisecond,
		out:           filepath.Join(dir, "PERFORMANCE.md"),
	}
	res, err := measureAll(t.Context(), e, cfg, 0.13, &bytes.Buffer{})
	require.NoError(t, err)
	res.Meta = newMeta(cfg, dir)
	res.PG = &pgInfo{Server: "PostgreSQL test", Settings: map[string]string{"fsync": "on"}, Verified: []string{"d-stage4-pg: OK 3 records"}}

	require.Len(t, res.Rounds, 2*(3+5)) // rounds x (1 caller: a, b, c; 4 callers: a to e)
	order := map[int][]string{}
	for _, r := range res.Rounds {
		require.Positive(t, r.Requests)
		if r.Round == 1 {
			order[r.Concurrency] = append(order[r.Concurrency], r.Config)
		}
	}
	require.Equal(t, []string{cfgDirect, cfgProxy, cfgStage4}, order[1])
	require.Equal(t, []string{cfgDirect, cfgProxy, cfgStage4, cfgStage4PG, cfgStage4PG2}, order[4])
	require.Len(t, res.PGRatios, 1)
	require.Equal(t, 4, res.PGRatios[0].Concurrency)
	require.Positive(t, res.PGRatios[0].RPSDOverC.Median)
	var pgRows int
	for _, s := range res.Summary {
		if s.Config == cfgStage4PG || s.Config == cfgStage4PG2 {
			pgRows++
			require.NotNil(t, s.PostgresCPUPer1k, s.Config)
		}
	}
	require.Equal(t, 2, pgRows)

	require.NoError(t, writeOutputs(res, cfg, &bytes.Buffer{}))
	md, err := os.ReadFile(cfg.out)
	require.NoError(t, err)
	for _, want := range []string{"## PostgreSQL audit store", "(d) stage4 serve, PostgreSQL", "(e) 2 x stage4 serve, one PostgreSQL",
		"throughput d/c", "d-stage4-pg: OK 3 records", "fsync=on"} {
		require.Contains(t, string(md), want)
	}
}

// TestBenchmarkDatabase creates a benchmark database on the test server,
// finds its sessions, and drops it.
func TestBenchmarkDatabase(t *testing.T) {
	t.Parallel()
	server := pgtest.ServerURL()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	probe, err := pgx.Connect(ctx, server)
	if err != nil {
		pgtest.Unavailable(t, "PostgreSQL is not reachable at %s: %v", server, err)
	}
	probe.Close(context.Background())

	dbURL, drop, err := createDatabase(ctx, server)
	require.NoError(t, err)
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	var pid int32
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid))

	find, closeFind, err := pgBackendFinder(server)
	require.NoError(t, err)
	defer closeFind()
	if u, err := url.Parse(server); err == nil && onLoopback(u) {
		require.Contains(t, find(dbURL), int(pid), "the session is found")
	}
	conn.Close(context.Background())

	require.NoError(t, drop()) // WITH (FORCE): also with sessions left open
	var n int
	check, err := pgx.Connect(ctx, server)
	require.NoError(t, err)
	defer check.Close(context.Background())
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	require.NoError(t, check.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1",
		strings.TrimPrefix(u.Path, "/")).Scan(&n))
	require.Zero(t, n, "the database is dropped")

	_, _, err = createDatabase(ctx, "postgres://postgres@127.0.0.1:1/postgres?connect_timeout=2")
	require.ErrorContains(t, err, "--pg-concurrency ''")
}
