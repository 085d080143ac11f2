package h2guard

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

// readBufferBytes is the size of a Conn's read buffer: grpc-go's default
// read buffer, which the Conn replaces.
const readBufferBytes = 32 << 10

// frameHeaderLen is the size of an HTTP/2 frame header.
const frameHeaderLen = 9

// prefixLen is the size of the gRPC message prefix: a compressed flag and
// the message's length.
const prefixLen = 5

// errClosedForAbuse is what grpc-go reads and writes from a connection the
// guard closed.
var errClosedForAbuse = errors.New("h2guard: connection closed for abusing HTTP/2")

// frameHeader is an HTTP/2 frame header.
type frameHeader struct {
	length uint32
	typ    http2.FrameType
	flags  http2.Flags
	stream uint32
}

func parseFrameHeader(b []byte) frameHeader {
	return frameHeader{
		length: uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:    http2.FrameType(b[3]),
		flags:  http2.Flags(b[4]),
		stream: binary.BigEndian.Uint32(b[5:9]) & (1<<31 - 1),
	}
}

// Conn is a guarded server connection (after any TLS handshake). grpc-go
// reads it through a buffer of its own, frame by frame, and the Conn
// follows the frames as they are handed out; it follows the server's
// writes by their frame headers.
type Conn struct {
	net.Conn
	g    *Guard
	addr *Addr

	// The read side: grpc-go's reader goroutine only, which also runs the
	// tap handle.
	raw            syscall.RawConn // to wait for input without a buffer, or nil
	rbufp          *[]byte         // from readBuffers while it holds input, else nil
	rbuf           []byte          // *rbufp, or nil
	r, w           int             // rbuf[r:w] is read but not yet handed out
	rerr           error           // the error that ended the last read of Conn
	preface        int             // bytes of the client preface still to hand out
	hdr            [frameHeaderLen]byte
	hdrN           int         // bytes of hdr handed out; frameHeaderLen while in a payload
	fh             frameHeader // the frame being handed out
	left           uint32      // bytes of its payload still to hand out
	data           *Stream     // the followed stream that fh's DATA belongs to, or nil
	padPending     bool        // fh is padded DATA whose pad length is still to come
	dataLeft       uint32      // message bytes (not padding) of fh still to come
	blockStream    uint32      // the stream of the header block being handed out
	blockEndStream bool        // whose HEADERS frame ends the stream
	lastBlock      uint32      // the stream of the block just handed out whole, until the next frame
	tapped         uint32      // the highest stream the tap handle has seen
	opened         int         // streams the client opened, halved with resets
	resets         int         // streams the client reset
	settingsSeen   bool
	glitches       int64 // frames that carry no request, less those forgiven
	glitchTick     int64
	windowUpdates  int64

	maxStream   atomic.Uint32 // the highest stream the client opened, for GOAWAY
	dataWritten atomic.Int64  // DATA frames the server wrote
	followed    atomic.Int32  // streams whose DATA frames are followed

	// mu guards streams, the counts below and the fields of Stream that
	// say so.
	mu      sync.Mutex
	streams map[uint32]*Stream // from the tap handle until the stream ends
	timed   int                // streams with a read clock, not yet arrived whole
	pending int                // streams whose handler returned and that have not ended

	// The write side: whoever holds wmu.
	wmu     sync.Mutex
	whdr    [frameHeaderLen]byte
	whdrN   int
	wleft   uint32
	wclosed bool

	aborted   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// RemoteAddr returns an *Addr, through which the tap handle finds c.
func (c *Conn) RemoteAddr() net.Addr { return c.addr }

// Read implements net.Conn: it hands out buffered bytes, following the
// frames they hold. It never hands out more than asked, so that when
// grpc-go acts on a frame, it is the last one the Conn handed out.
func (c *Conn) Read(p []byte) (int, error) {
	if c.aborted.Load() {
		return 0, errClosedForAbuse
	}
	if c.r == c.w {
		if c.rerr != nil {
			return 0, c.readErr()
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
		if c.r == c.w {
			return 0, nil
		}
	}
	n := copy(p, c.rbuf[c.r:c.w])
	c.consume(c.rbuf[c.r : c.r+n])
	c.r += n
	if c.r == c.w {
		c.releaseBuffer() // an idle connection holds none
	}
	if c.aborted.Load() {
		return 0, errClosedForAbuse
	}
	return n, nil
}

// readBuffers holds the read buffers of connections with nothing buffered.
var readBuffers = sync.Pool{New: func() any {
	b := make([]byte, readBufferBytes)
	return &b
}}

// fill reads into a buffer from readBuffers, which it takes only once
// there is something to read when the connection can say so (TCP on unix,
// as grpc-go's own reader does). It keeps a read error for after the bytes
// read with it, and returns it when nothing was read.
func (c *Conn) fill() error {
	var n int
	var err error
	if c.raw != nil {
		c.rbufp, n, err = readReady(c.raw)
	} else {
		c.rbufp = readBuffers.Get().(*[]byte)
		n, err = c.Conn.Read(*c.rbufp)
	}
	if c.rbufp != nil {
		c.rbuf = *c.rbufp
	}
	c.r, c.w, c.rerr = 0, n, err
	if n == 0 {
		c.releaseBuffer()
		if err != nil {
			return c.readErr()
		}
	}
	return nil
}

// releaseBuffer gives the read buffer back.
func (c *Conn) releaseBuffer() {
	if c.rbufp != nil {
		readBuffers.Put(c.rbufp)
	}
	c.rbufp, c.rbuf, c.r, c.w = nil, nil, 0, 0
}

func (c *Conn) readErr() error {
	if c.aborted.Load() {
		return errClosedForAbuse
	}
	return c.rerr
}

// consume follows the frames in b, the next bytes handed to grpc-go.
func (c *Conn) consume(b []byte) {
	for len(b) > 0 && !c.aborted.Load() {
		if c.preface > 0 {
			k := min(len(b), c.preface)
			c.preface -= k
			b = b[k:]
			continue
		}
		if c.hdrN < frameHeaderLen {
			if c.hdrN == 0 {
				c.lastBlock = 0
			}
			if c.hdrN == 0 && len(b) >= frameHeaderLen {
				// grpc-go reads a frame header on its own: whole.
				c.fh = parseFrameHeader(b)
				c.hdrN, b = frameHeaderLen, b[frameHeaderLen:]
			} else {
				k := copy(c.hdr[c.hdrN:], b)
				c.hdrN += k
				b = b[k:]
				if c.hdrN < frameHeaderLen {
					continue
				}
				c.fh = parseFrameHeader(c.hdr[:])
			}
			c.left = c.fh.length
			c.frameStart()
			if c.left == 0 {
				c.frameEnd()
			}
			continue
		}
		k := min(uint32(len(b)), c.left)
		if c.data != nil {
			c.dataBytes(b[:k])
		}
		c.left -= k
		b = b[k:]
		if c.left == 0 {
			c.frameEnd()
		}
	}
}

// frameStart acts on the header of the frame c.fh.
func (c *Conn) frameStart() {
	fh := c.fh
	switch fh.typ {
	case http2.FrameData:
		if fh.length == 0 && !fh.flags.Has(http2.FlagDataEndStream) {
			c.glitch()
		}
		if c.followed.Load() > 0 {
			c.mu.Lock()
			if s := c.streams[fh.stream]; s != nil && s.followed {
				c.data = s
				c.padPending = fh.flags.Has(http2.FlagDataPadded)
				c.dataLeft = fh.length
			}
			c.mu.Unlock()
		}
	case http2.FrameHeaders:
		if fh.stream > c.maxStream.Load() {
			c.maxStream.Store(fh.stream)
			c.opened++
			if c.opened >= 2*MinResets {
				c.opened, c.resets = c.opened/2, c.resets/2
			}
		}
		c.blockStream, c.blockEndStream = fh.stream, fh.flags.Has(http2.FlagHeadersEndStream)
	case http2.FrameContinuation:
		if fh.length == 0 {
			c.glitch()
		}
	case http2.FrameRSTStream:
		c.resets++
		c.streamReset(fh.stream)
		if c.resets >= MinResets && 2*c.resets > c.opened {
			c.abort(reasonRapidReset)
		}
	case http2.FrameSettings:
		if !fh.flags.Has(http2.FlagSettingsAck) {
			if c.settingsSeen {
				c.glitch()
			}
			c.settingsSeen = true
		}
	case http2.FrameWindowUpdate:
		c.windowUpdates++
		if c.windowUpdates > windowUpdatesFree+2*(c.dataWritten.Load()+int64(c.maxStream.Load()/2)) {
			c.glitch()
		}
	case http2.FramePing, http2.FrameGoAway, http2.FramePushPromise:
		// grpc-go's keepalive policy limits pings; the others end the
		// connection or are ignored.
	default: // PRIORITY and unknown types, which grpc-go ignores
		c.glitch()
	}
}

// frameEnd acts on the frame c.fh once it has been handed out whole.
func (c *Conn) frameEnd() {
	c.hdrN = 0
	fh := c.fh
	switch fh.typ {
	case http2.FrameData:
		if s := c.data; s != nil && fh.flags.Has(http2.FlagDataEndStream) {
			c.arrived(s)
		}
		c.data = nil
	case http2.FrameHeaders, http2.FrameContinuation:
		if !fh.flags.Has(http2.FlagHeadersEndHeaders) {
			return
		}
		c.lastBlock = c.blockStream
		// Trailers of a request being followed end it.
		if c.blockEndStream && c.followed.Load() > 0 {
			c.mu.Lock()
			s := c.streams[c.blockStream]
			c.mu.Unlock()
			if s != nil && s.followed {
				c.arrived(s)
			}
		}
	}
}

// dataBytes follows b, payload bytes of a DATA frame of the followed
// stream c.data, for the message prefix.
func (c *Conn) dataBytes(b []byte) {
	if c.padPending {
		c.padPending = false
		pad := uint32(b[0])
		b = b[1:]
		c.dataLeft = 0
		if 1+pad <= c.fh.length {
			c.dataLeft = c.fh.length - 1 - pad
		}
	}
	k := min(uint32(len(b)), c.dataLeft)
	c.dataLeft -= k
	s := c.data
	if s.preN < prefixLen && k > 0 {
		s.preN += copy(s.pre[s.preN:], b[:k])
		if s.preN == prefixLen {
			c.mu.Lock()
			s.setPrefix(s.pre[:])
			s.wakeIfReady()
			c.mu.Unlock()
		}
	}
}

// arrived records that the followed stream s has its request whole.
func (c *Conn) arrived(s *Stream) {
	c.mu.Lock()
	if s.followed {
		s.followed = false
		c.followed.Add(-1)
	}
	if !s.whole {
		s.whole = true
		if s.cancel != nil && c.streams[s.id] == s {
			c.timed--
		}
	}
	s.wakeIfReady()
	c.mu.Unlock()
}

// streamReset forgets the stream id, which the client reset.
func (c *Conn) streamReset(id uint32) {
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		c.remove(s)
		s.reset = true
		s.wakeIfReady()
	}
	c.mu.Unlock()
}

// remove forgets s, which has ended. c.mu is held.
func (c *Conn) remove(s *Stream) {
	delete(c.streams, s.id)
	if s.followed {
		s.followed = false
		c.followed.Add(-1)
	}
	if s.cancel != nil && !s.whole {
		c.timed--
	}
	if s.responded {
		c.pending--
	}
}

// glitch counts a frame that carries no request, forgiving
// ControlFramesPerSecond of them a second.
func (c *Conn) glitch() {
	if now := c.g.tick.Load(); now > c.glitchTick {
		c.glitches = max(0, c.glitches-(now-c.glitchTick)*c.g.glitchDecay)
		c.glitchTick = now
	}
	c.glitches++
	if c.glitches > MaxControlFrames {
		c.abort(reasonControlFrames)
	}
}

// tap makes the context of the stream whose header block was just handed
// out a *Stream, or returns ctx when that stream cannot be told.
func (c *Conn) tap(ctx context.Context) context.Context {
	id := c.lastBlock
	if id == 0 || id <= c.tapped || c.hdrN != 0 {
		c.g.untracked.Inc()
		return ctx
	}
	c.tapped = id
	s := &Stream{Context: ctx, c: c, id: id, start: c.g.tick.Load()}
	if c.blockEndStream {
		s.whole = true
	} else {
		c.peek(s)
	}
	s.wholeAtTap = s.whole
	if !s.whole {
		// The read timeout cancels the call through this context, which
		// grpc-go makes the stream's: its reads and writes end with it.
		s.Context, s.cancel = context.WithCancel(ctx)
		s.followed = true
		c.followed.Add(1)
	}
	c.mu.Lock()
	c.streams[id] = s
	if s.cancel != nil {
		c.timed++
	}
	c.mu.Unlock()
	return s
}

// peek looks for the request of the new stream s among the frames read but
// not yet handed out (the common case: a client sends a small request's
// HEADERS and DATA together), and marks it whole when it is all there.
func (c *Conn) peek(s *Stream) {
	b := c.rbuf[c.r:c.w]
	var pre [prefixLen]byte
	n := 0
	for len(b) >= frameHeaderLen {
		fh := parseFrameHeader(b)
		if uint32(len(b)-frameHeaderLen) < fh.length {
			return
		}
		payload := b[frameHeaderLen : frameHeaderLen+fh.length]
		b = b[frameHeaderLen+fh.length:]
		if fh.typ != http2.FrameData || fh.stream != s.id {
			continue
		}
		if fh.flags.Has(http2.FlagDataPadded) {
			if len(payload) == 0 || int(payload[0]) > len(payload)-1 {
				return
			}
			payload = payload[1 : len(payload)-int(payload[0])]
		}
		n += copy(pre[n:], payload)
		if fh.flags.Has(http2.FlagDataEndStream) {
			if n == prefixLen {
				s.setPrefix(pre[:])
			}
			s.whole = true
			return
		}
	}
}

// responded starts the response clock of s.
func (c *Conn) responded(s *Stream) {
	c.mu.Lock()
	if c.streams[s.id] == s && !s.responded {
		s.responded, s.respondedAt = true, c.g.tick.Load()
		c.pending++
	}
	c.mu.Unlock()
}

// Write implements net.Conn, following the server's frames by their
// headers: a stream ends on the wire with HEADERS that end it (trailers)
// or RST_STREAM.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return 0, errClosedForAbuse
	}
	n, err := c.Conn.Write(p)
	c.written(p[:n])
	return n, err
}

// written follows the frame headers in b, which has just been written.
// c.wmu is held.
func (c *Conn) written(b []byte) {
	var ended [16]uint32
	n := 0
	var data int64
	for len(b) > 0 {
		if c.wleft > 0 {
			k := min(uint32(len(b)), c.wleft)
			c.wleft -= k
			b = b[k:]
			continue
		}
		var fh frameHeader
		if c.whdrN == 0 && len(b) >= frameHeaderLen {
			fh, b = parseFrameHeader(b), b[frameHeaderLen:]
		} else {
			k := copy(c.whdr[c.whdrN:], b)
			c.whdrN += k
			b = b[k:]
			if c.whdrN < frameHeaderLen {
				break
			}
			c.whdrN = 0
			fh = parseFrameHeader(c.whdr[:])
		}
		c.wleft = fh.length
		switch {
		case fh.typ == http2.FrameData:
			data++
		case fh.typ == http2.FrameHeaders && fh.flags.Has(http2.FlagHeadersEndStream), fh.typ == http2.FrameRSTStream:
			if n == len(ended) {
				c.ended(ended[:n])
				n = 0
			}
			ended[n] = fh.stream
			n++
		}
	}
	if data > 0 {
		c.dataWritten.Add(data)
	}
	if n > 0 {
		c.ended(ended[:n])
	}
}

// ended forgets the streams ids, which the server has ended.
func (c *Conn) ended(ids []uint32) {
	c.mu.Lock()
	for _, id := range ids {
		if s := c.streams[id]; s != nil {
			c.remove(s)
		}
	}
	c.mu.Unlock()
}

// sweep cancels the calls whose request is late, and closes c when a
// response has waited too long.
func (c *Conn) sweep(tick int64) {
	g := c.g
	var late []*Stream
	stuck := false
	c.mu.Lock()
	if c.timed > 0 || c.pending > 0 {
		for _, s := range c.streams {
			if s.cancel != nil && !s.whole && !s.paused && !s.streaming && !s.timedOut.Load() && tick-s.start > g.readTicks {
				s.timedOut.Store(true)
				late = append(late, s)
			}
			if s.responded && tick-s.respondedAt > g.writeTicks {
				stuck = true
			}
		}
	}
	c.mu.Unlock()
	for _, s := range late {
		s.cancel()
		g.timedOut(c)
	}
	if stuck {
		c.abort(reasonSlowReader)
	}
}

// abort closes c for reason: GOAWAY at the next frame boundary of the
// server's writes if it comes soon, grpc-go's reader woken with an error
// (grpc-go then closes the transport, cancelling its calls), and the
// connection closed closeLinger later.
func (c *Conn) abort(reason string) {
	if !c.aborted.CompareAndSwap(false, true) {
		return
	}
	c.g.closing(c, reason)
	frame := goAway(c.maxStream.Load(), reason)
	// A deadline in the past wakes a reader blocked in Read; one in the
	// near future bounds a writer blocked on a client that does not read.
	_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
	_ = c.Conn.SetWriteDeadline(time.Now().Add(closeLinger))
	go func() {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		// Mid-frame (grpc-go's buffered writer split one between writes)
		// there is no GOAWAY to write: the connection closes without.
		if !c.wclosed && c.whdrN == 0 && c.wleft == 0 {
			_, _ = c.Conn.Write(frame)
		}
		c.wclosed = true
	}()
	// grpc-go closes c when its reader fails; this is in case it did not.
	time.AfterFunc(2*closeLinger, func() { _ = c.Conn.Close() })
}

// Close implements net.Conn. A connection closed for abuse closes
// closeLinger later, so that its GOAWAY reaches the client.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.g.forget(c)
		if c.aborted.Load() {
			time.AfterFunc(closeLinger, func() { _ = c.Conn.Close() })
			return
		}
		c.closeErr = c.Conn.Close()
	})
	return c.closeErr
}
