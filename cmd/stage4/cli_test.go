package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
)

// validPlanJSON is a plan in protojson form that passes validation.
const validPlanJSON = `{"user_id":"alice","token_hash":"alice-token","trigger_type":"manual",
 "steps":[{"domain":"text","method":"upper","parameters":{"text":"hi"}},
          {"domain":"text","method":"length","parameters":{}}],
 "data_bindings":[{"source_step":0,"source_output":"text","target_step":1,"target_parameter":"text"}]}`

func TestValidateCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string { return writeFile(t, dir, name, content) }
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string // a substring
		wantStderr string // a substring
	}{
		{
			name:       "valid plan",
			args:       []string{write("valid.json", validPlanJSON)},
			wantCode:   0,
			wantStdout: "OK sha256:",
		},
		{
			name:       "the ExecutePlan request body of the dev banner",
			args:       []string{write("request.json", devPlan)},
			wantCode:   0,
			wantStdout: "OK sha256:",
		},
		{
			name:       "request body with an unknown member",
			args:       []string{write("request-unknown.json", `{"plan":`+validPlanJSON+`,"admin":true}`)},
			wantCode:   1,
			wantStdout: `unknown field "admin"`,
		},
		{
			name:       "request body with a null plan",
			args:       []string{write("request-null.json", `{"plan":null}`)},
			wantCode:   1,
			wantStdout: "(plan): value is required",
		},
		{
			name:       "no steps",
			args:       []string{write("nosteps.json", `{"user_id":"alice","token_hash":"t","trigger_type":"manual","steps":[]}`)},
			wantCode:   1,
			wantStdout: "steps: ",
		},
		{
			name: "binding points forward",
			args: []string{write("forward.json", `{"user_id":"alice","token_hash":"t","trigger_type":"manual",
				"steps":[{"domain":"text","method":"upper","parameters":{}},{"domain":"text","method":"upper","parameters":{}}],
				"data_bindings":[{"source_step":1,"source_output":"text","target_step":0,"target_parameter":"text"}]}`)},
			wantCode:   1,
			wantStdout: "data_bindings[0]",
		},
		{
			name:       "unknown field",
			args:       []string{write("unknown.json", `{"user_id":"alice","token_hash":"t","trigger_type":"manual","steps":[],"admin":true}`)},
			wantCode:   1,
			wantStdout: "unknown field",
		},
		{
			name:       "wrong type",
			args:       []string{write("wrongtype.json", `{"user_id":42}`)},
			wantCode:   1,
			wantStdout: "INVALID",
		},
		{
			name:       "not JSON",
			args:       []string{write("broken.json", `{"user_id":`)},
			wantCode:   2,
			wantStderr: "not valid JSON",
		},
		{
			name:       "missing file",
			args:       []string{filepath.Join(dir, "nope.json")},
			wantCode:   2,
			wantStderr: "no such file",
		},
		{
			name:       "no argument",
			args:       nil,
			wantCode:   2,
			wantStderr: "Usage: stage4 validate",
		},
		{
			name:       "two arguments",
			args:       []string{"a.json", "b.json"},
			wantCode:   2,
			wantStderr: "Usage: stage4 validate",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runStage4(t, nil, append([]string{"validate"}, tt.args...)...)
			require.Equal(t, tt.wantCode, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Contains(t, stdout, tt.wantStdout)
			require.Contains(t, stderr, tt.wantStderr)
		})
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		args       []string
		env        []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "help", args: []string{"help"}, wantCode: 0, wantStdout: "stage4 serve --stage3-addr"},
		{name: "-h", args: []string{"-h"}, wantCode: 0, wantStdout: "stage4 audit verify LOG"},
		{name: "help of a command", args: []string{"help", "validate"}, wantCode: 0, wantStdout: "Exit status"},
		{name: "help of audit verify", args: []string{"help", "audit", "verify"}, wantCode: 0, wantStdout: "Usage: stage4 audit verify"},
		{name: "serve -h", args: []string{"serve", "-h"}, wantCode: 0, wantStderr: "STAGE4_STAGE3_ADDR"},
		{name: "flags are written with two dashes", args: []string{"help", "serve"}, wantCode: 0, wantStdout: "\n  --stage3-addr host:port\n"},
		{name: "version", args: []string{"version"}, wantCode: 0, wantStdout: "stage4 "},
		{name: "--version", args: []string{"--version"}, wantCode: 0, wantStdout: ", go1."},
		{name: "version with an argument", args: []string{"version", "x"}, wantCode: 2, wantStderr: "unexpected arguments"},
		{name: "no command", args: nil, wantCode: 2, wantStderr: "Usage:"},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2, wantStderr: `unknown command "frobnicate"`},
		{name: "unknown flag", args: []string{"serve", "--no-such-flag"}, wantCode: 2, wantStderr: "no-such-flag"},
		{
			name:       "serve without stage3 address",
			args:       []string{"serve", "--listen", "127.0.0.1:0"},
			wantCode:   2,
			wantStderr: "--stage3-addr (or STAGE4_STAGE3_ADDR) is required",
		},
		{
			name:       "bad environment value",
			args:       []string{"serve", "--stage3-addr", "127.0.0.1:1"},
			env:        []string{"STAGE4_SHUTDOWN_GRACE=soon"},
			wantCode:   2,
			wantStderr: `STAGE4_SHUTDOWN_GRACE="soon"`,
		},
		{
			name:       "client CA without server certificate",
			args:       []string{"serve", "--stage3-addr", "127.0.0.1:1", "--tls-client-ca-file", "ca.pem"},
			wantCode:   2,
			wantStderr: "--tls-client-ca-file needs --tls-cert-file",
		},
		{name: "audit without verify", args: []string{"audit"}, wantCode: 2, wantStderr: "Usage: stage4 audit verify"},
		{
			name:       "serve with segments below a mebibyte",
			args:       []string{"serve", "--stage3-addr", "127.0.0.1:1", "--audit-segment-bytes", "1000"},
			wantCode:   2,
			wantStderr: "serve: --audit-segment-bytes is 1000; it must be between 1048576 (1 MiB) and 2147483648 (2 GiB)",
		},
		{
			name:       "serve with segments below a mebibyte from the environment",
			args:       []string{"serve", "--stage3-addr", "127.0.0.1:1"},
			env:        []string{"STAGE4_AUDIT_SEGMENT_BYTES=1048575"},
			wantCode:   2,
			wantStderr: "must be between 1048576 (1 MiB)",
		},
		{
			name:       "serve with a segment size that is not a number",
			args:       []string{"serve", "--stage3-addr", "127.0.0.1:1"},
			env:        []string{"STAGE4_AUDIT_SEGMENT_BYTES=64MiB"},
			wantCode:   2,
			wantStderr: `STAGE4_AUDIT_SEGMENT_BYTES="64MiB"`,
		},
		{
			name:       "serve with segments past what the index addresses",
			args:       []string{"serve", "--stage3-addr", "127.0.0.1:1", "--audit-segment-bytes", "4294967296"},
			wantCode:   2,
			wantStderr: "it must be between 1048576 (1 MiB) and 2147483648 (2 GiB)",
		},
		{
			name:       "dev with segments below a mebibyte",
			args:       []string{"dev", "--audit-segment-bytes", "1000"},
			wantCode:   2,
			wantStderr: "dev: --audit-segment-bytes is 1000; it must be between 1048576 (1 MiB) and 2147483648 (2 GiB)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runStage4(t, tt.env, tt.args...)
			require.Equal(t, tt.wantCode, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Contains(t, stdout, tt.wantStdout)
			require.Contains(t, stderr, tt.wantStderr)
		})
	}
}

func TestAuditVerifyCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	intact := filepath.Join(dir, "intact.jsonl")
	writeAuditLog(t, intact, 3)
	good, err := os.ReadFile(intact)
	require.NoError(t, err)
	lines := strings.SplitAfter(string(good), "\n") // 3 records and a final ""
	require.Len(t, lines, 4)

	write := func(name, content string) string { return writeFile(t, dir, name, content) }
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "intact", args: []string{intact}, wantCode: 0, wantStdout: "OK 3 records, last hash sha256:"},
		{name: "empty", args: []string{write("empty.jsonl", "")}, wantCode: 0, wantStdout: "OK 0 records"},
		{
			name:       "incomplete last line is not damage",
			args:       []string{write("torn.jsonl", string(good)+`{"sequence":4,"ti`)},
			wantCode:   0,
			wantStdout: "incomplete last line of 17 bytes",
		},
		{
			name:       "altered record",
			args:       []string{write("altered.jsonl", lines[0]+strings.Replace(lines[1], "exec-1", "exec-9", 1)+lines[2])},
			wantCode:   1,
			wantStdout: "DAMAGED at sequence 2",
		},
		{
			name:       "deleted record",
			args:       []string{write("deleted.jsonl", lines[0]+lines[2])},
			wantCode:   1,
			wantStdout: "DAMAGED at sequence 2",
		},
		{
			name:       "reordered records",
			args:       []string{write("reordered.jsonl", lines[1]+lines[0]+lines[2])},
			wantCode:   1,
			wantStdout: "DAMAGED at sequence 1",
		},
		{name: "missing file", args: []string{filepath.Join(dir, "nope.jsonl")}, wantCode: 2, wantStderr: "no such file"},
		{name: "a directory that is not a log", args: []string{dir}, wantCode: 2, wantStderr: "is a directory but not an audit log directory"},
		{name: "no argument", args: nil, wantCode: 2, wantStderr: "Usage: stage4 audit verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runStage4(t, nil, append([]string{"audit", "verify"}, tt.args...)...)
			require.Equal(t, tt.wantCode, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Contains(t, stdout, tt.wantStdout)
			require.Contains(t, stderr, tt.wantStderr)
			require.NotContains(t, stderr, "verifying:", "progress is for terminals only")
		})
	}
}

// writeAuditLog writes a single-file log of n events, in the form a log
// had before logs were directories: its records, one a line, made by the
// audit package.
func writeAuditLog(t *testing.T, path string, n int) {
	t.Helper()
	st := memstore.NewStorage()
	log, err := audit.New(memstore.Open(st, ""))
	require.NoError(t, err)
	for i := range n {
		_, err := log.Append(t.Context(), audit.Event{
			Type:        audit.PlanReceived,
			ExecutionID: fmt.Sprintf("exec-%d", i),
			UserID:      "alice",
		})
		require.NoError(t, err)
	}
	require.NoError(t, log.Close())
	writeRecords(t, st, path)
}

// writeRecords writes the records of st into the file at path, one a line.
func writeRecords(t *testing.T, st *memstore.Storage, path string) {
	t.Helper()
	var data []byte
	for _, r := range st.Records() {
		data = append(append(data, r.Line...), '\n')
	}
	require.NoError(t, os.WriteFile(path, data, 0o600))
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}
