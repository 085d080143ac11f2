package netfault_test

import (
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/internal/netfault"
)

// silence is how long a test watches a connection to see nothing
// arrive. It bounds an assertion of absence, not a wait for an event.
const silence = 200 * time.Millisecond

// target is a listener standing for the server behind the proxy.
func target(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

func accept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	require.NoError(t, ln.(*net.TCPListener).SetDeadline(time.Now().Add(10*time.Second)))
	c, err := ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c net.Conn, s string) {
	t.Helper()
	_, err := c.Write([]byte(s))
	require.NoError(t, err)
}

func recv(t *testing.T, c net.Conn, want string) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	got := make([]byte, len(want))
	_, err := io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, want, string(got))
}

// requireSilent checks that nothing arrives on c for a while and that c
// is still open.
func requireSilent(t *testing.T, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(silence)))
	n, err := c.Read(make([]byte, 1))
	require.Zero(t, n)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "silence, not a closed connection")
}

func TestForwardsBothWays(t *testing.T) {
	t.Parallel()
	ln := target(t)
	p := netfault.New(t, ln.Addr().String())
	client := dial(t, p.Addr())
	server := accept(t, ln)
	send(t, client, "ping")
	recv(t, server, "ping")
	send(t, server, "pong")
	recv(t, client, "pong")

	// A FIN passes through; the other direction goes on.
	require.NoError(t, client.(*net.TCPConn).CloseWrite())
	require.NoError(t, server.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err := server.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
	send(t, server, "bye")
	recv(t, client, "bye")
}

func TestPartitionHoldsBytesUntilHealed(t *testing.T) {
	t.Parallel()
	ln := target(t)
	p := netfault.New(t, ln.Addr().String())
	client := dial(t, p.Addr())
	server := accept(t, ln)
	send(t, client, "before")
	recv(t, server, "before")

	p.Partition()
	send(t, client, "held 1,")
	send(t, server, "held back")
	send(t, client, " held 2")
	requireSilent(t, server)
	requireSilent(t, client)

	// A connection made during the partition is not even dialled.
	late := dial(t, p.Addr())
	send(t, late, "late")
	require.NoError(t, ln.(*net.TCPListener).SetDeadline(time.Now().Add(silence)))
	_, err := ln.Accept()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.Equal(t, 2, p.Conns())

	p.Heal()
	recv(t, server, "held 1, held 2")
	recv(t, client, "held back")
	lateServer := accept(t, ln)
	recv(t, lateServer, "late")
	send(t, client, "after")
	recv(t, server, "after")
}

func TestCutResetsEveryConnection(t *testing.T) {
	t.Parallel()
	ln := target(t)
	p := netfault.New(t, ln.Addr().String())
	tests := []struct {
		name      string
		partition bool
	}{
		{name: "flowing"},
		{name: "partitioned", partition: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := dial(t, p.Addr())
			server := accept(t, ln)
			send(t, client, "x")
			recv(t, server, "x")
			if tt.partition {
				p.Partition()
				defer p.Heal()
			}
			p.Cut()
			for _, c := range []net.Conn{client, server} {
				require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
				_, err := c.Read(make([]byte, 1))
				require.ErrorIs(t, err, syscall.ECONNRESET)
			}
		})
	}
	// Later connections are forwarded.
	client := dial(t, p.Addr())
	server := accept(t, ln)
	send(t, client, "again")
	recv(t, server, "again")
}
