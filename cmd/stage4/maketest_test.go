package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMakeTestListsSkippedTests: make test runs go test through the
// gotestsum pinned in tools/go.mod, which ends with every skipped test and
// the reason it gave (a run without PostgreSQL or node used to print only
// "ok"), and keeps go test's exit status. Checked on a module of its own
// with one passing, one skipped and, in a second run, one failing test.
func TestMakeTestListsSkippedTests(t *testing.T) {
	t.Parallel()
	makefile, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	require.NoError(t, err)
	require.Regexp(t, `(?m)^\t\$\(GOTESTSUM\) --format standard-quiet -- -race -count=1 \./\.\.\.$`, string(makefile))
	require.Contains(t, string(makefile), "GOTESTSUM := go tool -modfile=tools/go.mod gotestsum")

	// The tool's binary, built into the Go build cache.
	out, err := exec.Command("go", "-C", filepath.Join("..", ".."), "tool", "-modfile=tools/go.mod", "-n", "gotestsum").Output()
	require.NoError(t, err)
	gotestsum := strings.TrimSpace(string(out))

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module skipdemo\n\ngo 1.26\n"), 0o644))
	write := func(failing bool) {
		body := "package skipdemo\n\nimport \"testing\"\n\n" +
			"func TestRuns(t *testing.T) {}\n" +
			"func TestNeedsPostgres(t *testing.T) { t.Skip(\"no PostgreSQL at 127.0.0.1:5432: start one\") }\n"
		if failing {
			body += "func TestFails(t *testing.T) { t.Fatal(\"broken\") }\n"
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, "a_test.go"), []byte(body), 0o644))
	}
	run := func() (string, int) {
		cmd := exec.Command(gotestsum, "--format", "standard-quiet", "--", "-count=1", "./...")
		cmd.Dir = dir
		cmd.Env = append(cleanEnv(), "GOFLAGS=", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		require.NoError(t, err, string(out))
		return string(out), 0
	}

	write(false)
	out1, code := run()
	require.Equal(t, 0, code, out1)
	require.Regexp(t, regexp.MustCompile(`(?s)=== Skipped\n=== SKIP: \. TestNeedsPostgres .*no PostgreSQL at 127\.0\.0\.1:5432: start one.*DONE 2 tests, 1 skipped`), out1)

	write(true)
	out2, code := run()
	require.NotEqual(t, 0, code, "a failing test fails the run:\n%s", out2)
	require.Contains(t, out2, "=== Skipped")
	require.Contains(t, out2, "=== FAIL: . TestFails")
}
