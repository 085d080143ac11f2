package h2guard_test

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/stage4/stage4/internal/h2guard"
	"github.com/stage4/stage4/internal/rpcerr"
)

// chunked hands out at most n bytes per Read, so that the guard sees
// grpc-go's reads of frames split anywhere.
type chunked struct {
	net.Conn
	n int
}

func (c chunked) Read(p []byte) (int, error) { return c.Conn.Read(p[:min(len(p), c.n)]) }

// TestWaitTellsTheDeclaredLength: through a real gRPC client, a call learns
// its request's declared length and whether it has arrived whole before it
// reads it, however the connection's bytes are cut, and under TLS.
func TestWaitTellsTheDeclaredLength(t *testing.T) {
	t.Parallel()
	// The largest BytesValue whose message and prefix fill the window.
	const fits = streamWindow - 5 - 1 - 3
	sizes := []struct {
		name     string
		n        int
		compress bool
		whole    bool
	}{
		{name: "empty", n: 0, whole: true},
		{name: "small", n: 300, whole: true},
		{name: "fills the stream window", n: fits, whole: true},
		{name: "a byte over the stream window", n: fits + 1},
		{name: "4 MiB", n: 4 << 20},
		{name: "compressed", n: 100 << 10, compress: true, whole: true},
	}
	for _, reads := range []int{-1, 0, 1, 7, 1000} {
		name := "reads of " + strconv.Itoa(reads)
		if reads == -1 {
			name = "TLS"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var wrap func(net.Conn) net.Conn
			if reads > 0 {
				wrap = func(c net.Conn) net.Conn { return chunked{Conn: c, n: reads} }
			}
			var ts *testServer
			var conn *grpc.ClientConn
			if reads == -1 {
				server, client := selfSigned(t)
				ts = newServerWith(t, server, nil)
				conn = ts.client(t, grpc.WithTransportCredentials(client))
			} else {
				ts = newServer(t, wrap)
				conn = ts.client(t)
			}
			for _, tc := range sizes {
				if reads > 0 && reads < 1000 && tc.n > 1<<20 {
					continue // millions of reads
				}
				t.Run(tc.name, func(t *testing.T) {
					var opts []grpc.CallOption
					if tc.compress {
						opts = append(opts, grpc.UseCompressor(gzip.Name))
					}
					require.NoError(t, echo(t.Context(), conn, tc.n, opts...))
					sn := ts.next(t)
					require.True(t, sn.stream, "the call has a Stream")
					require.NoError(t, sn.err)
					require.Equal(t, tc.whole, sn.whole, "whole")
					require.Equal(t, tc.compress, sn.compressed, "compressed")
					if !tc.compress {
						require.Equal(t, uint32(proto.Size(&wrapperspb.BytesValue{Value: make([]byte, tc.n)})), sn.length)
					}
				})
			}
			require.Zero(t, ts.metric(t, "stage4_http2_untracked_streams_total"))
		})
	}
}

// TestWaitFollowsOddFrames: a prefix cut across padded DATA frames, with
// frames of another stream in between.
func TestWaitFollowsOddFrames(t *testing.T) {
	t.Parallel()
	ts := newServer(t, nil)
	c := dialRaw(t, ts.addr)
	msg := message(t, 100)
	require.NoError(t, c.headers(1, echoMethod, false))
	require.NoError(t, c.headers(3, echoMethod, false))
	require.NoError(t, c.do(func(fr *http2.Framer) error { return fr.WriteDataPadded(1, false, msg[:2], make([]byte, 7)) }))
	require.NoError(t, c.data(3, true, message(t, 1)))
	require.NoError(t, c.do(func(fr *http2.Framer) error { return fr.WriteDataPadded(1, false, msg[2:4], nil) }))
	require.NoError(t, c.data(1, true, msg[4:]))
	for range 2 {
		sn := ts.next(t)
		require.NoError(t, sn.err)
		require.True(t, sn.whole)
		require.Contains(t, []uint32{uint32(len(msg) - 5), 3}, sn.length)
	}
	ended := map[uint32]bool{}
	for len(ended) < 2 {
		f := c.waitFor("trailers", func(f frame) bool { return f.typ == http2.FrameHeaders && f.flags.Has(http2.FlagHeadersEndStream) })
		require.Equal(t, "0", f.headers["grpc-status"], "stream %d", f.stream)
		ended[f.stream] = true
	}
}

// TestLateRequestsAreCancelled: a call whose request has not arrived whole
// within the read timeout ends with DEADLINE_EXCEEDED, holding nothing
// meanwhile; the connection's other calls go on.
func TestLateRequestsAreCancelled(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	tests := []struct {
		name string
		send func(t *testing.T, c *rawClient)
	}{
		{name: "headers only", send: func(*testing.T, *rawClient) {}},
		{name: "part of the message", send: func(t *testing.T, c *rawClient) {
			require.NoError(t, c.data(1, false, append(prefix(100), make([]byte, 10)...)))
		}},
		{name: "the whole message but no end of stream", send: func(t *testing.T, c *rawClient) {
			require.NoError(t, c.data(1, false, message(t, 98)))
		}},
		{name: "a byte at a time", send: func(t *testing.T, c *rawClient) {
			msg := message(t, 100)
			go func() {
				for _, b := range msg {
					if c.data(1, false, []byte{b}) != nil {
						return
					}
					time.Sleep(timeout / 10) // the trickle, not synchronisation
				}
			}()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := newServer(t, nil, h2guard.WithRequestReadTimeout(timeout))
			c := dialRaw(t, ts.addr)
			require.NoError(t, c.headers(1, echoMethod, false))
			tc.send(t, c)
			sn := ts.next(t)
			require.Equal(t, rpcerr.RequestReadTimeout, rpcerr.Reason(sn.err), "%v", sn.err)
			require.Equal(t, int(codes.DeadlineExceeded), c.trailers(1))
			require.InDelta(t, 1, ts.metric(t, "stage4_http2_request_read_timeouts_total"), 0)

			// The connection still serves.
			require.NoError(t, c.headers(3, echoMethod, false))
			require.NoError(t, c.data(3, true, message(t, 10)))
			require.Equal(t, int(codes.OK), c.trailers(3))
		})
	}
}

// TestReadTimeoutPausesForTheBudget: the read clock of a request larger
// than the stream window stops while its call waits (for a budget), and
// starts again from zero when the call reads: a request that then does not
// arrive is cancelled.
func TestReadTimeoutPausesForTheBudget(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	ts := newServer(t, nil, h2guard.WithRequestReadTimeout(timeout))
	waited := make(chan struct{})
	ts.svc.read = func(s *h2guard.Stream) {
		s.PauseReadTimeout()
		defer s.ResumeReadTimeout()
		// Longer than the timeout, to see the paused clock not fire.
		select {
		case <-s.Done():
		case <-time.After(3 * timeout):
		}
		close(waited)
	}
	c := dialRaw(t, ts.addr)
	require.NoError(t, c.headers(1, echoMethod, false))
	require.NoError(t, c.data(1, false, append(prefix(1<<20), make([]byte, 100)...)))
	<-waited
	require.Zero(t, ts.metric(t, "stage4_http2_request_read_timeouts_total"), "no timeout while paused")
	sn := ts.next(t)
	require.Equal(t, rpcerr.RequestReadTimeout, rpcerr.Reason(sn.err), "%v", sn.err)
	require.Equal(t, int(codes.DeadlineExceeded), c.trailers(1))
}

// TestClientStreamingIsNotTimedOut: a client-streaming call's request ends
// when its client is done, so it has no read timeout.
func TestClientStreamingIsNotTimedOut(t *testing.T) {
	t.Parallel()
	const timeout = 100 * time.Millisecond
	ts := newServer(t, nil, h2guard.WithRequestReadTimeout(timeout))
	conn := ts.client(t)
	stream, err := conn.NewStream(t.Context(), &grpc.StreamDesc{ClientStreams: true}, collectMethod)
	require.NoError(t, err)
	require.NoError(t, stream.SendMsg(wrapperspb.Bytes(nil)))
	time.Sleep(3 * timeout) // the client thinks for longer than the timeout: the scenario
	require.NoError(t, stream.SendMsg(wrapperspb.Bytes(nil)))
	require.NoError(t, stream.CloseSend())
	var n wrapperspb.Int64Value
	require.NoError(t, stream.RecvMsg(&n))
	require.Equal(t, int64(2), n.GetValue())
	require.Zero(t, ts.metric(t, "stage4_http2_request_read_timeouts_total"))
}

// TestResets: a connection on which the client resets more than half of
// its streams, at least MinResets, gets GOAWAY ENHANCE_YOUR_CALM and is
// closed; one that resets fewer is served on. Other connections are
// served meanwhile.
func TestResets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		resets int // streams reset of every three
		closed bool
	}{
		{name: "a third of the streams", resets: 1},
		{name: "two thirds of the streams", resets: 2, closed: true},
		{name: "every stream (rapid reset)", resets: 3, closed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := newServer(t, nil)
			other := ts.client(t)
			c := dialRaw(t, ts.addr)
			const streams = 6 * h2guard.MinResets
			sent := make(chan uint32, 1) // the last stream sent
			go func() {
				var id uint32
				defer func() { sent <- id }()
				for i := range uint32(streams) {
					id = 2*i + 1
					if c.headers(id, echoMethod, false) != nil {
						return
					}
					if int(i%3) < tc.resets {
						if c.do(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeCancel) }) != nil {
							return
						}
					} else if c.data(id, true, message(t, 10)) != nil {
						return
					}
				}
			}()
			// Meanwhile, another connection is served.
			require.NoError(t, echo(t.Context(), other, 10))
			if !tc.closed {
				last := <-sent
				require.Equal(t, uint32(2*streams-1), last)
				require.NoError(t, c.headers(last+2, echoMethod, false))
				require.NoError(t, c.data(last+2, true, message(t, 10)))
				require.Equal(t, int(codes.OK), c.trailers(last+2))
				require.Zero(t, ts.metric(t, "stage4_http2_connections_closed_total"))
				return
			}
			f := c.goAway()
			require.Equal(t, http2.ErrCodeEnhanceYourCalm, f.code)
			require.Equal(t, "rapid_reset", f.debug)
			require.Less(t, f.last, uint32(2*4*h2guard.MinResets), "closed within 4 x MinResets streams")
			<-sent
			require.InDelta(t, 1, ts.metric(t, "stage4_http2_connections_closed_total", "reason", "rapid_reset"), 0)
			require.NoError(t, echo(t.Context(), other, 10))
		})
	}
}

// TestControlFrameFloodsGetGoAway: floods of frames that carry no request
// close the connection with GOAWAY ENHANCE_YOUR_CALM; pings are left to
// grpc-go's keepalive policy, which does the same.
func TestControlFrameFloodsGetGoAway(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		frames int
		open   func(c *rawClient) error // before the flood
		send   func(fr *http2.Framer) error
		debug  string
	}{
		{name: "SETTINGS", frames: 2 * h2guard.MaxControlFrames, send: func(fr *http2.Framer) error { return fr.WriteSettings() }},
		{name: "PRIORITY", frames: 2 * h2guard.MaxControlFrames, send: func(fr *http2.Framer) error {
			return fr.WritePriority(1, http2.PriorityParam{Weight: 1})
		}},
		{name: "unknown frames", frames: 2 * h2guard.MaxControlFrames, send: func(fr *http2.Framer) error {
			return fr.WriteRawFrame(0x20, 0, 0, nil)
		}},
		{name: "WINDOW_UPDATE", frames: 5 * h2guard.MaxControlFrames, send: func(fr *http2.Framer) error {
			return fr.WriteWindowUpdate(0, 1)
		}},
		{name: "empty DATA", frames: 2 * h2guard.MaxControlFrames,
			open: func(c *rawClient) error { return c.headers(1, echoMethod, false) },
			send: func(fr *http2.Framer) error { return fr.WriteData(1, false, nil) }},
		{name: "empty CONTINUATION", frames: 2 * h2guard.MaxControlFrames,
			open: func(c *rawClient) error {
				<-c.acked // no SETTINGS ack inside the header block
				return c.do(func(fr *http2.Framer) error {
					return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.headerBlock(echoMethod)})
				})
			},
			send: func(fr *http2.Framer) error { return fr.WriteContinuation(1, false, nil) }},
		{name: "PING (grpc-go)", frames: 100, debug: "too_many_pings", send: func(fr *http2.Framer) error {
			return fr.WritePing(false, [8]byte{})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := newServer(t, nil)
			c := dialRaw(t, ts.addr)
			if tc.open != nil {
				require.NoError(t, tc.open(c))
			}
			go func() {
				for range tc.frames {
					if c.do(tc.send) != nil {
						return
					}
				}
			}()
			f := c.goAway()
			require.Equal(t, http2.ErrCodeEnhanceYourCalm, f.code)
			debug := tc.debug
			if debug == "" {
				debug = "control_frames"
				require.InDelta(t, 1, ts.metric(t, "stage4_http2_connections_closed_total", "reason", "control_frames"), 0)
			}
			require.Equal(t, debug, f.debug)
		})
	}
}

// TestBusyClientsAreNotClosed: a gRPC client's ordinary traffic (BDP
// pings, window updates, large responses, its SETTINGS) closes nothing.
func TestBusyClientsAreNotClosed(t *testing.T) {
	t.Parallel()
	ts := newServer(t, nil)
	ts.svc.respBytes = 256 << 10
	conn := ts.client(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if err := echo(t.Context(), conn, 100<<10); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 8 * 50 {
		ts.next(t)
	}
	wg.Wait()
	require.Zero(t, ts.metric(t, "stage4_http2_connections_closed_total"))
}

// TestSlowResponseReadersAreClosed: a connection whose client takes no
// response within the write timeout, because it grants no flow-control
// window or does not read the socket, is closed.
func TestSlowResponseReadersAreClosed(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	t.Run("no window", func(t *testing.T) {
		t.Parallel()
		ts := newServer(t, nil, h2guard.WithResponseWriteTimeout(timeout))
		c := dialRaw(t, ts.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		require.NoError(t, c.headers(1, echoMethod, false))
		require.NoError(t, c.data(1, true, message(t, 10)))
		ts.next(t)
		f := c.goAway()
		require.Equal(t, http2.ErrCodeEnhanceYourCalm, f.code)
		require.Equal(t, "slow_reader", f.debug)
		require.InDelta(t, 1, ts.metric(t, "stage4_http2_connections_closed_total", "reason", "slow_reader"), 0)
	})
	t.Run("socket not read", func(t *testing.T) {
		t.Parallel()
		ts := newServer(t, nil, h2guard.WithResponseWriteTimeout(timeout))
		ts.svc.respBytes = 64 << 20 // more than the sockets' buffers
		c := dialRawUnread(t, ts.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		require.NoError(t, c.do(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 1<<31-1-65535) }))
		require.NoError(t, c.headers(1, echoMethod, false))
		require.NoError(t, c.data(1, true, message(t, 10)))
		ts.next(t)
		require.Eventually(t, func() bool {
			return ts.metric(t, "stage4_http2_connections_closed_total", "reason", "slow_reader") == 1
		}, waitTimeout, 10*time.Millisecond)
		go c.read()
		c.closed()
	})
}

// TestNormalCallsAreUntouched: calls end, their streams are forgotten, and
// nothing is counted.
func TestNormalCallsAreUntouched(t *testing.T) {
	t.Parallel()
	ts := newServer(t, nil, h2guard.WithRequestReadTimeout(50*time.Millisecond), h2guard.WithResponseWriteTimeout(50*time.Millisecond))
	conn := ts.client(t)
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	for range 100 {
		require.NoError(t, echo(ctx, conn, 1000))
		ts.next(t)
	}
	require.Zero(t, ts.metric(t, "stage4_http2_request_read_timeouts_total"))
	require.Zero(t, ts.metric(t, "stage4_http2_connections_closed_total"))
	require.Zero(t, ts.metric(t, "stage4_http2_untracked_streams_total"))
}
