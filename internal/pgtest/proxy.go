package pgtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a TCP proxy in front of a PostgreSQL server that follows the
// wire protocol closely enough to cut a connection at an exact point: at a
// client's COMMIT. It makes a lost connection during COMMIT, an ambiguous
// outcome for the client, happen deterministically in both flavours, the
// commit landed or it did not. It also refuses connections on demand, to
// stand for a database that cannot be reached. TLS is not supported: URL
// sets sslmode=disable.
type Proxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	refuse atomic.Bool
	mu     sync.Mutex
	cut    *cut          // armed cut, taken by the next COMMIT
	held   chan struct{} // while not nil, messages wait for it to close (Hold)
	links  map[*link]bool
	wg     sync.WaitGroup
}

type cut struct {
	forward bool          // send the COMMIT to the server before cutting
	done    chan struct{} // closed once the server has answered (forward) or the link is cut
}

// NewProxy starts a proxy to the server of serverURL (host and port), on a
// free loopback port, closed when the test ends.
func NewProxy(t testing.TB, serverURL string) *Proxy {
	t.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		t.Fatalf("parse server URL: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{t: t, ln: ln, target: u.Host, links: map[*link]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		p.Release()
		ln.Close()
		p.wg.Wait()
	})
	return p
}

// URL rewrites dbURL (a URL on the proxied server) to go through the proxy.
func (p *Proxy) URL(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		p.t.Fatalf("parse URL: %v", err)
	}
	u.Host = p.ln.Addr().String()
	q := u.Query()
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	return u.String()
}

// CutAtNextCommit arms a cut for the next simple-protocol COMMIT any client
// sends. With forward, the COMMIT reaches the server and the client's side
// is cut before the answer: the transaction commits, the client cannot
// know. Without, the COMMIT is dropped and both sides are cut: the server
// aborts the transaction, the client cannot know either. The returned
// channel is closed once the server has finished with the COMMIT (forward)
// or both sides are cut.
func (p *Proxy) CutAtNextCommit(forward bool) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = &cut{forward: forward, done: make(chan struct{})}
	return p.cut.done
}

// Refuse makes the proxy close every new connection at once (on) or
// forward them again (off). Open connections are not affected.
func (p *Proxy) Refuse(on bool) { p.refuse.Store(on) }

// CutAll closes every open connection, both sides: a database that went
// away. With Refuse(true) first, nothing reaches it any more.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := range p.links {
		l.cut()
	}
}

// link is one proxied connection.
type link struct {
	client, server net.Conn
	once           sync.Once
	gone           chan struct{} // closed when the link is cut
}

func (l *link) cut() {
	l.once.Do(func() {
		l.client.Close()
		l.server.Close()
		close(l.gone)
	})
}

// Hold stops forwarding, in both directions and on every connection, new
// ones included, while keeping the connections open: a network partition,
// where the peers see silence rather than a reset. Release ends it and
// forwards what waited.
func (p *Proxy) Hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held == nil {
		p.held = make(chan struct{})
	}
}

// Release ends Hold.
func (p *Proxy) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held != nil {
		close(p.held)
		p.held = nil
	}
}

// wait blocks while the proxy holds messages, or until c is closed
// (reported as false).
func (p *Proxy) wait(closed <-chan struct{}) bool {
	p.mu.Lock()
	held := p.held
	p.mu.Unlock()
	if held == nil {
		return true
	}
	select {
	case <-held:
		return true
	case <-closed:
		return false
	}
}

// track adds l to the open links (or removes it), so that CutAll can cut
// it.
func (p *Proxy) track(add bool, l *link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.links[l] = true
	} else {
		delete(p.links, l)
	}
}

func (p *Proxy) takeCut() *cut {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.cut
	p.cut = nil
	return c
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // listener closed
		}
		if p.refuse.Load() {
			client.Close()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(client)
		}()
	}
}

const (
	sslRequestCode = 80877103
	gssRequestCode = 80877104
)

func (p *Proxy) handle(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	l := &link{client: client, server: server, gone: make(chan struct{})}
	p.track(true, l)
	defer p.track(false, l)
	// gone is closed when the link is cut, so that a held message stops
	// waiting.
	defer l.cut()
	gone := l.gone
	// Start-up messages have no type byte. An SSL or GSS encryption request
	// is declined here, so that everything after it is readable.
	for {
		msg, err := readUntyped(client)
		if err != nil {
			return
		}
		if len(msg) == 8 {
			if code := binary.BigEndian.Uint32(msg[4:]); code == sslRequestCode || code == gssRequestCode {
				if _, err := client.Write([]byte{'N'}); err != nil {
					return
				}
				continue
			}
		}
		if _, err := server.Write(msg); err != nil {
			return
		}
		break
	}
	var drain atomic.Bool // after a forwarded cut: discard the server's answer
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		for {
			typ, msg, err := readTyped(server)
			if err != nil {
				// The server hung up (after a cancel request, say): so
				// does the proxy, or the client would wait for it.
				client.Close()
				return
			}
			if drain.Load() {
				if typ == 'Z' { // ReadyForQuery: the COMMIT is done
					return
				}
				continue
			}
			if !p.wait(gone) {
				return
			}
			if _, err := client.Write(msg); err != nil && !drain.Load() {
				return
			}
		}
	}()
	for {
		typ, msg, err := readTyped(client)
		if err != nil {
			server.Close()
			<-answered
			return
		}
		if typ == 'Q' && isCommit(msg[5:]) {
			if c := p.takeCut(); c != nil {
				if c.forward {
					drain.Store(true)
					client.Close()
					if _, err := server.Write(msg); err == nil {
						<-answered
					}
				} else {
					client.Close()
				}
				server.Close()
				<-answered
				close(c.done)
				return
			}
		}
		if !p.wait(gone) {
			server.Close()
			<-answered
			return
		}
		if _, err := server.Write(msg); err != nil {
			<-answered
			return
		}
	}
}

func isCommit(query []byte) bool {
	q := bytes.TrimRight(bytes.TrimSpace(bytes.TrimRight(query, "\x00")), ";")
	return bytes.EqualFold(q, []byte("commit"))
}

// readUntyped reads a start-up message: a length (including itself) and the
// payload, returned whole.
func readUntyped(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 4 || n > 1<<20 {
		return nil, errors.New("bad start-up message length")
	}
	msg := make([]byte, n)
	copy(msg, hdr[:])
	_, err := io.ReadFull(r, msg[4:])
	return msg, err
}

// readTyped reads one regular message: type byte, length, payload, returned
// whole.
func readTyped(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n > 1<<30 {
		return 0, nil, errors.New("bad message length")
	}
	msg := make([]byte, 1+n)
	copy(msg, hdr[:])
	_, err := io.ReadFull(r, msg[5:])
	return hdr[0], msg, err
}
