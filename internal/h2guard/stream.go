package h2guard

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/internal/rpcerr"
)

// Stream is what the guard knows of one stream of a guarded connection. It
// is the stream's context (and so an ancestor of its handler's), and its
// methods are safe for concurrent use.
type Stream struct {
	context.Context
	c  *Conn
	id uint32
	// cancel ends the stream's context when its request is late; nil when
	// the request had arrived whole by the tap handle.
	cancel context.CancelFunc
	// wholeAtTap is whole as the tap handle found it; it never changes.
	wholeAtTap bool

	// The reader goroutine's while followed.
	pre  [prefixLen]byte
	preN int

	// Under c.mu once the tap handle has returned.
	followed    bool // its DATA frames are followed for the prefix and the end
	prefix      bool // the message prefix has arrived: length and compressed hold
	length      uint32
	compressed  bool
	whole       bool  // the request has arrived whole (END_STREAM)
	reset       bool  // the client reset the stream
	paused      bool  // no read timeout while the call waits for a budget
	streaming   bool  // a client-streaming call: no read timeout
	start       int64 // tick at which the read clock started
	responded   bool  // the handler returned; the response is being written
	respondedAt int64 // tick at which it returned
	wake        chan struct{}

	timedOut atomic.Bool
}

// streamKey is the context key under which a Stream finds itself.
type streamKey struct{}

// FromContext returns the Stream of the call whose context (or an
// ancestor's) ctx is, or nil when the call's connection is not guarded or
// its stream could not be followed.
func FromContext(ctx context.Context) *Stream {
	s, _ := ctx.Value(streamKey{}).(*Stream)
	return s
}

// Value implements context.Context.
func (s *Stream) Value(key any) any {
	if key == (streamKey{}) {
		return s
	}
	return s.Context.Value(key)
}

// Err implements context.Context: a call cancelled because its request was
// late ends as if by a deadline, and grpc-go, which reads this error when a
// read of the request fails, answers DEADLINE_EXCEEDED.
func (s *Stream) Err() error {
	err := s.Context.Err()
	if err != nil && s.timedOut.Load() {
		return context.DeadlineExceeded
	}
	return err
}

// Conn returns the stream's connection, for accounting by connection.
func (s *Stream) Conn() any { return s.c }

// Wait waits until the stream's request has arrived whole, or its message
// is too large to arrive before the call reads it (the transport takes in
// one stream window before that), or ctx ends. It returns the message's
// declared length and whether it is compressed (0 and false when the
// request has none), and whether the request has arrived whole. A late
// request's call fails with ReadTimeoutErr; a reset stream's with
// CANCELED.
func (s *Stream) Wait(ctx context.Context) (length uint32, compressed, whole bool, err error) {
	if s.wholeAtTap {
		return s.length, s.compressed, true, nil
	}
	c := s.c
	c.mu.Lock()
	for !s.ready() {
		if s.wake == nil {
			s.wake = make(chan struct{})
		}
		wake := s.wake
		c.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			if err := s.ReadTimeoutErr(); err != nil {
				return 0, false, false, err
			}
			return 0, false, false, status.FromContextError(ctx.Err()).Err()
		}
		c.mu.Lock()
	}
	length, compressed, whole, reset := s.length, s.compressed, s.whole, s.reset
	c.mu.Unlock()
	if reset {
		return 0, false, false, status.Error(codes.Canceled, "the client reset the stream")
	}
	return length, compressed, whole, nil
}

// ready says whether Wait may return. c.mu is held.
func (s *Stream) ready() bool {
	return s.whole || s.reset || (s.prefix && prefixLen+int64(s.length) > s.c.g.cfg.streamWindow)
}

// wakeIfReady wakes a Wait that may return. c.mu is held.
func (s *Stream) wakeIfReady() {
	if s.wake != nil && s.ready() {
		close(s.wake)
		s.wake = nil
	}
}

// setPrefix records the message prefix p. c.mu is held, or s is not yet
// shared.
func (s *Stream) setPrefix(p []byte) {
	s.prefix, s.compressed, s.length = true, p[0] != 0, binary.BigEndian.Uint32(p[1:prefixLen])
}

// PauseReadTimeout stops the read clock while the call waits for
// something other than its request (a budget): the rest of a request
// larger than a stream window cannot arrive until the call reads it.
func (s *Stream) PauseReadTimeout() {
	s.c.mu.Lock()
	s.paused = true
	s.c.mu.Unlock()
}

// ResumeReadTimeout restarts the read clock from zero, as the call begins
// to read its request.
func (s *Stream) ResumeReadTimeout() {
	s.c.mu.Lock()
	s.paused, s.start = false, s.c.g.tick.Load()
	s.c.mu.Unlock()
}

// ReadTimeoutErr returns the error a call whose request was late must end with
// (DEADLINE_EXCEEDED, reason REQUEST_READ_TIMEOUT), or nil while it is not.
func (s *Stream) ReadTimeoutErr() error {
	if !s.timedOut.Load() {
		return nil
	}
	return rpcerr.New(codes.DeadlineExceeded, rpcerr.RequestReadTimeout,
		fmt.Sprintf("the request did not arrive whole within the server's read timeout (%s)", s.c.g.cfg.readTimeout), nil)
}

// handlerReturned starts the response clock.
func (s *Stream) handlerReturned() { s.c.responded(s) }

// clientStreaming exempts the stream from the read timeout.
func (s *Stream) clientStreaming() {
	s.c.mu.Lock()
	s.streaming = true
	s.c.mu.Unlock()
}
