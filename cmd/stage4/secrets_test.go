package main

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/pgtest"
	"github.com/stage4/stage4/internal/testkit"
)

// TestServeRefusesAMistypedAuditLog: an --audit-log that begins with a URL
// scheme is a URL, and one this binary has no store for is refused at
// start (exit 2) rather than taken as a directory: before, each of these
// served from a private local log nobody else saw, and logged the
// password. The message quotes the value with its password hidden, and
// nothing is created.
func TestServeRefusesAMistypedAuditLog(t *testing.T) {
	t.Parallel()
	const password = "s3cret-pw"
	tests := []struct {
		name       string
		auditLog   string
		viaEnv     bool
		wantStderr string
	}{
		{name: "misspelt scheme", auditLog: "postgress://stage4:" + password + "@db.example/audit",
			wantStderr: `unknown scheme "postgress"`},
		{name: "colon left out", auditLog: "postgresql//stage4:" + password + "@db.example/audit",
			wantStderr: "looks like a URL with a mistake"},
		{name: "password as a parameter, from the environment", auditLog: "postgress://db.example/audit?password=" + password,
			viaEnv: true, wantStderr: `unknown scheme "postgress"`},
		{name: "scheme in capitals, misspelt", auditLog: "POSTGRE://stage4:" + password + "@db.example/audit",
			wantStderr: `unknown scheme "postgre"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := []string{"serve", "--stage3-addr", "127.0.0.1:1", "--stage3-insecure", "--metrics-listen", ""}
			var env []string
			if tt.viaEnv {
				env = []string{"STAGE4_AUDIT_LOG=" + tt.auditLog}
			} else {
				args = append(args, "--audit-log", tt.auditLog)
			}
			p := startIn(t, dir, env, args...)
			require.Equal(t, exitUsage, p.exitCode(t), "stderr: %s", p.stderr.String())
			stderr := p.stderr.String()
			require.Contains(t, stderr, tt.wantStderr)
			require.Contains(t, stderr, "xxxxx", "the value is quoted, redacted")
			require.NotContains(t, stderr, password)
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Empty(t, entries, "a refused location created something")
		})
	}
}

// TestServeHidesTheDatabasePassword: serve on a PostgreSQL URL that holds
// a password, with --pprof: /debug/pprof/cmdline (which showed the URL as
// given), /metrics and the logs never hold the password.
func TestServeHidesTheDatabasePassword(t *testing.T) {
	t.Parallel()
	const password = "s3cret-pw"
	u, err := url.Parse(pgtest.NewDatabase(t))
	require.NoError(t, err)
	// The shared server trusts local connections, so it never asks for
	// the password: the URL carries it all the same.
	u.User = url.UserPassword(u.User.Username(), password)

	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	s4 := start(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--pprof",
		"--stage3-addr", s3Addr, "--stage3-insecure", "--audit-log="+u.String())
	addr, metricsAddr := s4.servingAddr(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = stage4v1.NewStage4ServiceClient(conn).ExecutePlan(testContext(t), &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)

	get := func(path string) string {
		req, err := http.NewRequestWithContext(testContext(t), http.MethodGet, "http://"+metricsAddr+path, nil)
		require.NoError(t, err)
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode, path)
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		return string(body)
	}
	cmdline := strings.Split(get("/debug/pprof/cmdline"), "\x00")
	require.Contains(t, cmdline, "serve", "the command line is still shown")
	require.Contains(t, strings.Join(cmdline, " "), "--audit-log=postgres://"+u.User.Username()+":xxxxx@")
	for _, page := range []string{strings.Join(cmdline, " "), get("/metrics"), s4.stderr.String()} {
		require.NotContains(t, page, password)
	}
}

// TestServeHidesThePasswordOfAnUnreachableDatabase: when the database of a
// postgres:// --audit-log cannot be reached, serve exits 1 quoting the
// URL, with a password given as a parameter (which libpq and pgx accept)
// hidden like one in the user information.
func TestServeHidesThePasswordOfAnUnreachableDatabase(t *testing.T) {
	t.Parallel()
	const password = "s3cret-pw"
	for _, auditLog := range []string{
		"postgres://stage4:" + password + "@127.0.0.1:1/audit?connect_timeout=1",
		"postgres://stage4@127.0.0.1:1/audit?password=" + password + "&connect_timeout=1",
	} {
		code, _, stderr := runStage4(t, nil, "serve", "--stage3-addr", "127.0.0.1:1", "--stage3-insecure",
			"--metrics-listen", "", "--audit-log", auditLog)
		require.Equal(t, 1, code, stderr)
		require.Contains(t, stderr, "127.0.0.1:1/audit", "the message says which database")
		require.NotContains(t, stderr, password)
	}
}
