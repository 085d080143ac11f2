//go:build unix

package h2guard

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// rawConn returns the syscall.RawConn of a plain TCP connection, through
// which a Conn waits for input without holding a buffer; nil for any other
// connection (TLS: reading the raw connection would read ciphertext).
func rawConn(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// readReady waits until raw has input, then reads it into a buffer from
// readBuffers: an idle connection holds none. buf is nil when n is 0.
func readReady(raw syscall.RawConn) (buf *[]byte, n int, err error) {
	var rerr error
	werr := raw.Read(func(fd uintptr) bool {
		buf = readBuffers.Get().(*[]byte)
		for {
			n, rerr = syscall.Read(int(fd), *buf)
			if !errors.Is(rerr, syscall.EINTR) {
				break
			}
		}
		if errors.Is(rerr, syscall.EAGAIN) {
			readBuffers.Put(buf)
			buf, rerr = nil, nil
			return false // nothing to read: wait in the poller, then try again
		}
		return true
	})
	switch {
	case werr != nil: // closed, or the deadline passed
		err = werr
	case rerr != nil:
		err = rerr
	case n == 0:
		err = io.EOF
	}
	if n < 0 {
		n = 0
	}
	if n == 0 && buf != nil {
		readBuffers.Put(buf)
		buf = nil
	}
	return buf, n, err
}
