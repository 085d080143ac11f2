//go:build !unix

package h2guard

import (
	"net"
	"syscall"
)

// rawConn returns nil: without unix's non-blocking reads, a Conn holds its
// buffer while it waits for input.
func rawConn(net.Conn) syscall.RawConn { return nil }

// readReady is not called without rawConn.
func readReady(syscall.RawConn) (*[]byte, int, error) {
	panic("h2guard: readReady without a raw connection")
}
