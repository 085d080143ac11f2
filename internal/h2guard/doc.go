// Package h2guard watches the HTTP/2 frames of every connection of a gRPC
// server, below grpc-go's transport, to defend what grpc-go leaves open:
//
//   - Requests that arrive slowly. Each call learns its request's declared
//     length (the 5-byte gRPC message prefix) and whether the request has
//     arrived whole before it reads it (Stream.Wait), so that a budget can
//     reserve by the declared length and need not hold anything while a
//     body trickles in. A request that has not arrived whole within the
//     read timeout has its call cancelled.
//   - Responses that are not read. A connection on which a response has
//     waited longer than the write timeout to be written (the client grants
//     no flow-control window, or does not read the socket) is closed.
//   - Floods of control frames: stream resets (HTTP/2 rapid reset,
//     CVE-2023-44487), SETTINGS, empty DATA and CONTINUATION frames,
//     PRIORITY and unknown frames, and WINDOW_UPDATE frames beyond what the
//     server's writes explain. Past the thresholds below the connection gets
//     GOAWAY with ENHANCE_YOUR_CALM and is closed.
//
// A Conn wraps each connection after its TLS handshake (Credentials wraps
// the server's transport credentials; plaintext ones too). It buffers what
// grpc-go reads, in place of grpc-go's own read buffer (ServerOptions sets
// grpc.ReadBufferSize(0)), and follows the frames as grpc-go consumes them,
// so that when grpc-go's tap handle runs for a new stream, the header block
// grpc-go has just decoded is the last one the Conn handed out: that is how
// a stream's id is joined to its call, which grpc-go does not expose. The
// tap handle then makes the stream's context a *Stream, which handlers find
// with FromContext. The Conn also reads the server's own writes, frame
// header by frame header, to see responses end and to write GOAWAY at a
// frame boundary.
//
// grpc-go's own defences this package relies on rather than repeats:
// handlers of one connection are limited to its MaxConcurrentStreams
// (grpc-go's fix for CVE-2023-44487: the connection's reader waits while
// that many run); a connection whose peer does not read stops being read
// once 50 control responses (SETTINGS and PING acks, RST_STREAM, window
// updates) are queued, which bounds the memory of every control-frame
// flood; the keepalive enforcement policy, which closes connections that
// ping more often than it allows without the server writing in between;
// x/net's framer, which bounds a header list (SETTINGS_MAX_HEADER_LIST_SIZE)
// and closes the connection when CONTINUATION frames run far over it
// (CVE-2023-45288); and the per-stream write quota, which makes a unary
// handler return once its response is queued, so that a slow reader holds
// memory but no handler.
package h2guard
