// Package netfault is a TCP proxy for tests that partitions the network
// on command: it forwards connections from a loopback port to a target
// and can hold every byte in both directions while keeping the
// connections open (the peers see silence, not a reset, as across a
// partition), heal (deliver what was held and go on), or cut every
// connection with a reset.
//
// Unlike pgtest.Proxy it knows no protocol, so it serves any TCP peer.
package netfault

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy forwards the connections accepted on a loopback port to a target.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	gate   chan struct{} // closed while the network is whole; open during a partition
	conns  map[*link]struct{}
	closed bool
	wg     sync.WaitGroup
}

// link is one proxied connection: the client's, and the target's once
// dialled.
type link struct {
	client net.Conn
	mu     sync.Mutex
	server net.Conn
	cut    chan struct{} // closed when the link is cut
	once   sync.Once
}

// New starts a proxy to target (host:port) on a free loopback port; it is
// closed, with every connection, when the test ends.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("netfault: listen: %v", err)
	}
	gate := make(chan struct{})
	close(gate)
	p := &Proxy{ln: ln, target: target, gate: gate, conns: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's address, to give the client instead of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Partition holds every byte from now on, in both directions, on every
// connection, and the dial of every connection accepted meanwhile; the
// connections stay open. Bytes already being delivered when it is called
// may still arrive.
func (p *Proxy) Partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default: // already partitioned
	}
}

// Heal ends a partition: what was held is delivered, in order, and the
// connections go on.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// Cut resets every open connection, on both sides (an RST, not a FIN);
// later connections are forwarded as before.
func (p *Proxy) Cut() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.reset()
	}
}

// Conns is the number of connections open through the proxy.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops accepting, resets every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Heal()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) currentGate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gate
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		l := &link{client: c, cut: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.wg.Done()
			p.serve(l)
			p.mu.Lock()
			delete(p.conns, l)
			p.mu.Unlock()
		}()
	}
}

func (p *Proxy) serve(l *link) {
	if !p.wait(l) { // a partition: not even the connection gets through
		l.reset()
		return
	}
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		l.reset()
		return
	}
	l.mu.Lock()
	l.server = server
	l.mu.Unlock()
	select {
	case <-l.cut: // cut while dialling, before reset could see server
		server.Close()
		return
	default:
	}
	var wg sync.WaitGroup
	wg.Go(func() { p.pump(l, server, l.client) })
	p.pump(l, l.client, server)
	wg.Wait()
	l.close()
}

// wait waits until the network is whole; false when the link was cut
// meanwhile.
func (p *Proxy) wait(l *link) bool {
	for {
		gate := p.currentGate()
		select {
		case <-gate:
			// A partition may have begun since gate was read: check
			// again.
			if p.currentGate() == gate {
				return true
			}
		case <-l.cut:
			return false
		}
	}
}

// pump copies src to dst, holding what it read while partitioned. A FIN
// from src is passed on; an error resets the link.
func (p *Proxy) pump(l *link, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait(l) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				l.reset()
				return
			}
		}
		if errors.Is(err, io.EOF) {
			if !p.wait(l) { // the FIN is held too
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
		if err != nil {
			l.reset()
			return
		}
	}
}

// reset closes both connections with an RST.
func (l *link) reset() { l.end(true) }

// close closes both connections after both directions ended.
func (l *link) close() { l.end(false) }

func (l *link) end(rst bool) {
	l.once.Do(func() {
		close(l.cut)
		l.mu.Lock()
		server := l.server
		l.mu.Unlock()
		for _, c := range []net.Conn{l.client, server} {
			if c == nil {
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok && rst {
				tc.SetLinger(0)
			}
			c.Close()
		}
	})
}
