package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
)

func TestBurstRequestFillsTheSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		shape   string
		size    int
		wantErr string
	}{
		{name: "one long string", shape: "string", size: 4 << 20},
		{name: "many small values", shape: "values", size: 4 << 20},
		{name: "small", shape: "string", size: 2048},
		{name: "unknown shape", shape: "blob", size: 4 << 20, wantErr: `--shape "blob"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req, err := burstRequest(tt.shape, tt.size)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			n := proto.Size(req)
			require.LessOrEqual(t, n, tt.size, "over the server's limit")
			require.Greater(t, n, tt.size-64, "well short of the size")
		})
	}
}

func TestParseBurstConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantErr bool
	}{
		{name: "defaults", args: nil},
		{name: "no calls", args: []string{"--calls", "0"}, wantErr: true},
		{name: "tiny requests", args: []string{"--bytes", "10"}, wantErr: true},
		{name: "stray argument", args: []string{"now"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := parseBurstConfig(tt.args, io.Discard)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, 200, c.calls)
			require.Equal(t, 4<<20, c.bytes)
		})
	}
}
