// Package pgtest gives tests a PostgreSQL database of their own: a fresh,
// randomly named database on the server named by STAGE4_TEST_POSTGRES_URL
// (NewDatabase), a throwaway cluster that a test may stop and start
// (StartCluster), and a TCP proxy that cuts connections on cue (Proxy).
//
// Where no PostgreSQL is reachable the tests skip, saying how to run them,
// except when CI=true: then they fail, so that a green CI always means the
// PostgreSQL tests ran.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stage4/stage4/audit"
)

// EnvURL names the environment variable with the URL of the test server.
const EnvURL = "STAGE4_TEST_POSTGRES_URL"

// DefaultURL is the server the project's machines run: PostgreSQL 15 on
// loopback with trust authentication.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres"

// ServerURL returns the URL of the test server: $STAGE4_TEST_POSTGRES_URL or
// DefaultURL. It names a database that exists (the maintenance database),
// used only to create and drop the tests' own.
func ServerURL() string {
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	return DefaultURL
}

// Unavailable ends the test because it cannot run here: a skip that says
// how to run it, or a failure under CI=true.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: PostgreSQL tests must run in CI)", msg)
	}
	t.Skipf("%s; to run this test, start PostgreSQL 15 and set %s (default %s)", msg, EnvURL, DefaultURL)
}

// NewDatabase creates an empty database with a random name on the test
// server and returns its URL; the database is dropped, with any
// connections still open to it, when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	return NewDatabaseOn(t, ServerURL())
}

// NewDatabaseOn is NewDatabase on the server of serverURL (a throwaway
// cluster's, for instance).
func NewDatabaseOn(t testing.TB, serverURL string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		Unavailable(t, "PostgreSQL is not reachable at %s: %v", audit.RedactLocation(serverURL), err)
	}
	defer admin.Close(context.Background())
	name := "stage4_test_" + randomHex(8)
	// The name is ours and safe to splice: a prefix and hex digits.
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, serverURL)
		if err != nil {
			t.Errorf("drop test database %s: %v", name, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(serverURL)
	if err != nil {
		t.Fatalf("parse %s: %v", EnvURL, err)
	}
	u.Path = "/" + name
	return u.String()
}

// Exec runs one SQL statement on the database at dbURL, for tests that
// arrange or damage data behind a store's back.
func Exec(t testing.TB, dbURL, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect to %s: %v", audit.RedactLocation(dbURL), err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	return hex.EncodeToString(b)
}
