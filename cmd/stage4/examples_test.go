package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// exampleTimeout bounds one example run. The first TypeScript run installs
// its npm packages and may compile buf; later ones take seconds.
const exampleTimeout = 5 * time.Minute

// exitToolMissing is tools/examples.sh's status for "a tool it needs is
// missing", which it explains on stderr.
const exitToolMissing = 3

// TestExamples runs each client of examples/, through tools/examples.sh as
// make example-* does, against a stage4 dev of its own, and checks through
// its own client that the execution each one printed is in the audit log,
// completed, and that its retry with the same request_id was answered from
// that execution. A missing node or Python grpcio skips that example locally
// and fails it under CI=true, where every example must run.
func TestExamples(t *testing.T) {
	t.Parallel()
	dev := start(t, nil, "dev", "--listen", "127.0.0.1:0", "--stage3-listen", "127.0.0.1:0",
		"--metrics-listen", "", "--audit-log", filepath.Join(t.TempDir(), "audit"))
	addr := devAddr(t, dev)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	client := stage4v1.NewStage4ServiceClient(conn)

	tests := []struct {
		name string // the example, as tools/examples.sh names it
		text string // what the example upper-cases
	}{
		{name: "go", text: "hello from go"},
		{name: "typescript", text: "hello from typescript"},
		{name: "python", text: "hello from python"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), exampleTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join("..", "..", "tools", "examples.sh"), tt.name, addr)
			cmd.Env = cleanEnv()
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() == exitToolMissing {
				if os.Getenv("CI") == "true" {
					t.Fatalf("CI must run the %s example: %s", tt.name, stderr.String())
				}
				t.Skipf("skipped: %s", strings.TrimSpace(stderr.String()))
			}
			require.NoError(t, err, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			out := stdout.String()

			m := regexp.MustCompile(`(?m)^executed ([0-9a-f]+) \(plan hmac-sha256:[0-9a-f]{64}\)$`).FindStringSubmatch(out)
			require.NotNil(t, m, "no execution id in:\n%s", out)
			require.Contains(t, out, strings.ToUpper(tt.text))
			// Each language prints JSON its own way: 17 or 17.0, a space or not.
			require.Regexp(t, `(?m)^step 1 text\.length: \{"length": ?`+strconv.Itoa(len(tt.text))+`(\.0)?\}$`, out)
			require.Contains(t, out, "EXECUTION_COMPLETED")
			// Each sends its call again with its request_id, as after a
			// lost answer, and gets the first answer, replayed: the audit
			// log below holds that one execution only.
			replay := regexp.MustCompile(`(?m)^retried [0-9a-f-]{36}: replayed ([0-9a-f]+) \(x-stage4-replayed: \[true\]\)$`).FindStringSubmatch(out)
			require.NotNil(t, replay, "no replayed call in:\n%s", out)
			require.Equal(t, m[1], replay[1], "the replay names the first execution")

			res, err := client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{ExecutionId: m[1]})
			require.NoError(t, err)
			var types []stage4v1.AuditEventType
			for _, e := range res.GetAuditEvents() {
				types = append(types, e.GetType())
			}
			require.Equal(t, []stage4v1.AuditEventType{
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED,
				stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED,
			}, types)
		})
	}
}

// devAddr waits for dev's banner and returns Stage-4's bound address.
func devAddr(t *testing.T, dev *proc) string {
	t.Helper()
	const prefix = "Stage-4 gRPC:"
	line := dev.stdout.waitFor(t, "the dev banner", func(l string) bool {
		return strings.HasPrefix(strings.TrimSpace(l), prefix)
	})
	fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), prefix))
	require.NotEmpty(t, fields, "banner line %q", line)
	return fields[0]
}
