package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestServeHardeningFlagErrors: serve refuses to start with a protection
// configured so that it could not work, with exit status 2.
func TestServeHardeningFlagErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		args       []string
		env        []string
		wantStderr string
	}{
		{
			name:       "identities without client certificates",
			args:       []string{"--audit-readers", "spiffe://stage4.test/auditor"},
			wantStderr: "--audit-readers names identities, which only verified client certificates carry",
		},
		{
			name:       "star with identities",
			env:        []string{"STAGE4_AUDIT_READERS=*,auditor.stage4.test"},
			wantStderr: "cannot be combined with identities",
		},
		{
			name:       "empty entry",
			args:       []string{"--audit-readers", "a.stage4.test,,b.stage4.test"},
			wantStderr: "empty entry",
		},
		{
			name:       "no header list",
			args:       []string{"--max-header-list-bytes", "0"},
			wantStderr: "--max-header-list-bytes must be positive",
		},
		{
			name:       "in-flight budget below one request",
			env:        []string{"STAGE4_MAX_INFLIGHT_REQUEST_BYTES=1024"},
			wantStderr: "--max-inflight-request-bytes must be 0 (the default) or at least --max-message-bytes",
		},
		{
			name:       "no time to read a request",
			args:       []string{"--request-read-timeout", "0s"},
			wantStderr: "--request-read-timeout and --response-write-timeout must be positive",
		},
		{
			name:       "negative time to take a response",
			env:        []string{"STAGE4_RESPONSE_WRITE_TIMEOUT=-1s"},
			wantStderr: "--request-read-timeout and --response-write-timeout must be positive",
		},
		{
			name:       "no audit reads",
			args:       []string{"--max-concurrent-audit-reads", "0"},
			wantStderr: "--max-concurrent-audit-reads and --audit-read-max-scanned must be at least 1",
		},
		{
			name:       "more reading time than turns",
			env:        []string{"STAGE4_AUDIT_READ_SHARE=3", "STAGE4_MAX_CONCURRENT_AUDIT_READS=2"},
			wantStderr: "--audit-read-share above 0 and at most --max-concurrent-audit-reads",
		},
		{
			name:       "no records to scan",
			args:       []string{"--audit-read-max-scanned", "-1"},
			wantStderr: "--max-concurrent-audit-reads and --audit-read-max-scanned must be at least 1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"serve", "--stage3-addr", "127.0.0.1:1", "--stage3-insecure"}, tt.args...)
			code, stdout, stderr := runStage4(t, tt.env, args...)
			require.Equal(t, exitUsage, code, "stdout: %s\nstderr: %s", stdout, stderr)
			require.Contains(t, stderr, tt.wantStderr)
		})
	}
}
