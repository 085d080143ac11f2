package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/testkit"
)

// TestServeBoundsHeaderLists: the header list of a request is capped at
// --max-header-list-bytes (64 KiB by default). A gRPC client learns the cap
// from the server's SETTINGS and refuses to send more itself, with
// INTERNAL; a client that sends 16 MiB anyway is cut off without the
// server holding it in memory; headers under the cap still work.
func TestServeBoundsHeaderLists(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, nil, nil)
	small := startGateway(t, nil, []string{"--max-header-list-bytes", "4096"})

	tests := []struct {
		name     string
		gw       *stage4Process
		idBytes  int // length of the x-request-id sent
		wantCode codes.Code
	}{
		{name: "60 KiB under the default", gw: gw, idBytes: 60 << 10, wantCode: codes.OK},
		{name: "70 KiB over the default", gw: gw, idBytes: 70 << 10, wantCode: codes.Internal},
		{name: "16 MiB", gw: gw, idBytes: 16 << 20, wantCode: codes.Internal},
		{name: "2 KiB under --max-header-list-bytes 4096", gw: small, idBytes: 2 << 10, wantCode: codes.OK},
		{name: "8 KiB over --max-header-list-bytes 4096", gw: small, idBytes: 8 << 10, wantCode: codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(testContext(t), "x-request-id", strings.Repeat("a", tt.idBytes))
			_, err := tt.gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
			require.Equal(t, tt.wantCode, status.Code(err), "%v", err)
			if tt.wantCode != codes.OK {
				// grpc-go's own refusal: nothing was sent.
				require.Contains(t, status.Convert(err).Message(), "header list size to send violates the maximum size")
			}
		})
	}

	t.Run("a client that ignores the cap is cut off", func(t *testing.T) {
		block := hugeHeaderBlock(t, gw.addr, 16<<20)
		for range 10 {
			sendHeaderBlock(t, gw.addr, block)
		}
		peak := procStatusKiB(t, gw.stage4.cmd.Process.Pid, "VmHWM:")
		// 10 x 16 MiB would be 160 MiB; the server reads a few frames past
		// the cap and drops the connection.
		require.Less(t, peak, int64(100<<10), "peak RSS %d KiB", peak)
		_, err := gw.client.ExecutePlan(testContext(t), &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
		require.NoError(t, err, "the server goes on serving")
	})
}

// hugeHeaderBlock is the HPACK-encoded header list of an ExecutePlan call
// to addr whose x-request-id is n bytes.
func hugeHeaderBlock(t *testing.T, addr string, n int) []byte {
	t.Helper()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: stage4v1.Stage4Service_ExecutePlan_FullMethodName}, {Name: ":authority", Value: addr},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		{Name: "x-request-id", Value: strings.Repeat("a", n)},
	} {
		require.NoError(t, enc.WriteField(f))
	}
	return block.Bytes()
}

// sendHeaderBlock opens an HTTP/2 connection to addr and starts a call with
// the header list block, ignoring the server's SETTINGS as a hostile client
// would. It returns once the server has closed the connection or reset the
// stream.
func sendHeaderBlock(t *testing.T, addr string, block []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(waitTimeout)))
	_, err = conn.Write([]byte(http2.ClientPreface))
	require.NoError(t, err)
	fr := http2.NewFramer(conn, conn)
	require.NoError(t, fr.WriteSettings())
	// The writer stops at the first error: the server closing the
	// connection under it is the expected end.
	written := make(chan struct{})
	go func() {
		defer close(written)
		const frameBytes = 16 << 10
		b := block
		if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:frameBytes]}) != nil {
			return
		}
		for b = b[frameBytes:]; len(b) > 0; {
			k := min(frameBytes, len(b))
			if fr.WriteContinuation(1, k == len(b), b[:k]) != nil {
				return
			}
			b = b[k:]
		}
	}()
	defer func() { <-written }()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			require.True(t, errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err), "read: %v", err)
			return
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return
		case *http2.HeadersFrame:
			t.Fatalf("the server answered the call: %v", f)
		}
	}
}

// isReset reports a connection reset by the peer.
func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset by peer")
}

// procStatusKiB reads a "Key:  1234 kB" line (VmRSS:, VmHWM:) of
// /proc/PID/status.
func procStatusKiB(t *testing.T, pid int, key string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			require.Len(t, f, 2, "%q", line)
			n, err := strconv.ParseInt(f[0], 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}
