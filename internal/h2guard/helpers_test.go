package h2guard_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/stage4/stage4/internal/h2guard"
)

// waitTimeout bounds every wait of a test.
const waitTimeout = 30 * time.Second

// streamWindow is the test servers' static stream window, as in Stage-4.
const streamWindow = 64 << 10

// Method names of the test service.
const (
	echoMethod    = "/h2guard.test.Echo/Echo"
	collectMethod = "/h2guard.test.Echo/Collect"
)

// seen is what the Echo handler learnt of its request before reading it.
type seen struct {
	stream     bool // the call had a Stream
	length     uint32
	compressed bool
	whole      bool
	err        error // from Wait, or from reading the request
}

// echoService answers Echo with a response of respBytes bytes and reports
// what it saw of each request on seen. Collect reads messages until the
// client is done and answers with their count.
type echoService struct {
	seen      chan seen
	respBytes int
	// read, when set, runs between Wait and reading the request.
	read func(s *h2guard.Stream)
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "h2guard.test.Echo",
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Echo", Handler: echoHandler}},
	Streams:     []grpc.StreamDesc{{StreamName: "Collect", Handler: collectHandler, ClientStreams: true}},
}

func echoHandler(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
	svc := srv.(*echoService)
	var sn seen
	s := h2guard.FromContext(ctx)
	if s != nil {
		sn.stream = true
		sn.length, sn.compressed, sn.whole, sn.err = s.Wait(ctx)
		if sn.err == nil && svc.read != nil {
			svc.read(s)
		}
	}
	req := &wrapperspb.BytesValue{}
	if sn.err == nil {
		if err := dec(req); err != nil {
			sn.err = err
			if s != nil && s.ReadTimeoutErr() != nil {
				sn.err = s.ReadTimeoutErr()
			}
		}
	}
	svc.seen <- sn
	if sn.err != nil {
		return nil, sn.err
	}
	return icpt(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: echoMethod}, func(context.Context, any) (any, error) {
		return &wrapperspb.BytesValue{Value: make([]byte, svc.respBytes)}, nil
	})
}

func collectHandler(_ any, ss grpc.ServerStream) error {
	n := 0
	for {
		if err := ss.RecvMsg(&wrapperspb.BytesValue{}); err != nil {
			if errors.Is(err, io.EOF) {
				return ss.SendMsg(wrapperspb.Int64(int64(n)))
			}
			return err
		}
		n++
	}
}

// testServer is a gRPC server with a Guard on loopback TCP.
type testServer struct {
	addr  string
	svc   *echoService
	reg   *prometheus.Registry
	guard *h2guard.Guard
}

// newServer starts a guarded plaintext server; wrap, when set, wraps each
// accepted connection before the guard sees it.
func newServer(t *testing.T, wrap func(net.Conn) net.Conn, opts ...h2guard.Option) *testServer {
	t.Helper()
	return newServerWith(t, nil, wrap, opts...)
}

// newServerWith is newServer with the transport credentials creds.
func newServerWith(t *testing.T, creds credentials.TransportCredentials, wrap func(net.Conn) net.Conn, opts ...h2guard.Option) *testServer {
	t.Helper()
	ts := &testServer{svc: &echoService{seen: make(chan seen, 1<<16)}, reg: prometheus.NewRegistry()}
	ts.guard = h2guard.New(append([]h2guard.Option{h2guard.WithRegisterer(ts.reg), h2guard.WithStreamWindow(streamWindow)}, opts...)...)
	srv := grpc.NewServer(append(ts.guard.ServerOptions(),
		grpc.Creds(ts.guard.Credentials(creds)),
		grpc.StaticStreamWindowSize(streamWindow),
		grpc.StaticConnWindowSize(1<<20),
		grpc.MaxRecvMsgSize(8<<20))...)
	srv.RegisterService(&echoDesc, ts.svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ts.addr = lis.Addr().String()
	var l net.Listener = lis
	if wrap != nil {
		l = wrapListener{Listener: lis, wrap: wrap}
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return ts
}

type wrapListener struct {
	net.Listener
	wrap func(net.Conn) net.Conn
}

func (l wrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.wrap(c), nil
}

// client connects a plaintext gRPC client to ts; opts may replace its
// credentials.
func (ts *testServer) client(t *testing.T, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(ts.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// echo calls Echo with a request of about n bytes.
func echo(ctx context.Context, conn *grpc.ClientConn, n int, opts ...grpc.CallOption) error {
	return conn.Invoke(ctx, echoMethod, &wrapperspb.BytesValue{Value: make([]byte, n)}, &wrapperspb.BytesValue{}, opts...)
}

// next returns what the next Echo call saw.
func (ts *testServer) next(t *testing.T) seen {
	t.Helper()
	select {
	case sn := <-ts.svc.seen:
		return sn
	case <-time.After(waitTimeout):
		t.Fatal("no call reached the handler")
		return seen{}
	}
}

// metric returns the sum of the series of the counter name.
func (ts *testServer) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	families, err := ts.reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() != labels[i+1] {
						continue next
					}
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// frame is what a rawClient read: a copy of the parts tests look at.
type frame struct {
	typ     http2.FrameType
	stream  uint32
	flags   http2.Flags
	code    http2.ErrCode // GOAWAY, RST_STREAM
	debug   string        // GOAWAY
	last    uint32        // GOAWAY's last stream
	headers map[string]string
}

// rawClient speaks HTTP/2 frame by frame over TCP, as no gRPC client
// would.
type rawClient struct {
	t      *testing.T
	conn   net.Conn
	mu     sync.Mutex // guards fr's writes and enc
	fr     *http2.Framer
	enc    *hpack.Encoder
	encBuf bytes.Buffer
	frames chan frame    // closed when the connection ends
	err    error         // why, once frames is closed
	acked  chan struct{} // closed once the server's SETTINGS are acknowledged
}

// dialRaw connects to addr and sends the preface and settings; it reads
// every frame the server sends (acknowledging its SETTINGS) onto frames.
func dialRaw(t *testing.T, addr string, settings ...http2.Setting) *rawClient {
	t.Helper()
	c := dialRawUnread(t, addr, settings...)
	go c.read()
	return c
}

// dialRawUnread is dialRaw without the reading: the test starts c.read
// when the client is to read.
func dialRawUnread(t *testing.T, addr string, settings ...http2.Setting) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	c := &rawClient{t: t, conn: conn, fr: http2.NewFramer(conn, conn), frames: make(chan frame, 1<<16), acked: make(chan struct{})}
	c.enc = hpack.NewEncoder(&c.encBuf)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	_, err = conn.Write([]byte(http2.ClientPreface))
	require.NoError(t, err)
	require.NoError(t, c.fr.WriteSettings(settings...))
	return c
}

// read reads every frame the server sends onto frames, acknowledging its
// SETTINGS, until the connection ends.
func (c *rawClient) read() {
	defer close(c.frames)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.err = err
			return
		}
		fr := frame{typ: f.Header().Type, stream: f.Header().StreamID, flags: f.Header().Flags}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.mu.Lock()
				_ = c.fr.WriteSettingsAck()
				c.mu.Unlock()
				select {
				case <-c.acked:
				default:
					close(c.acked)
				}
			}
		case *http2.GoAwayFrame:
			fr.code, fr.debug, fr.last = f.ErrCode, string(f.DebugData()), f.LastStreamID
		case *http2.RSTStreamFrame:
			fr.code = f.ErrCode
		case *http2.MetaHeadersFrame:
			fr.headers = map[string]string{}
			for _, hf := range f.Fields {
				fr.headers[hf.Name] = hf.Value
			}
		}
		c.frames <- fr
	}
}

// headerBlock is the HPACK block of a gRPC request to method.
func (c *rawClient) headerBlock(method string) []byte {
	c.encBuf.Reset()
	for _, hf := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: method},
		{Name: ":authority", Value: "localhost"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		require.NoError(c.t, c.enc.WriteField(hf))
	}
	return bytes.Clone(c.encBuf.Bytes())
}

// headers opens stream id for method.
func (c *rawClient) headers(id uint32, method string, endStream bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headerBlock(method), EndStream: endStream, EndHeaders: true})
}

// data sends a DATA frame.
func (c *rawClient) data(id uint32, endStream bool, b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fr.WriteData(id, endStream, b)
}

// do runs f with the framer, for frames without a helper.
func (c *rawClient) do(f func(fr *http2.Framer) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return f(c.fr)
}

// message is a gRPC message of a BytesValue of n bytes, with its prefix.
func message(t *testing.T, n int) []byte {
	t.Helper()
	b, err := proto.Marshal(&wrapperspb.BytesValue{Value: make([]byte, n)})
	require.NoError(t, err)
	return append(prefix(len(b)), b...)
}

// prefix is the gRPC message prefix of an uncompressed message of n bytes.
func prefix(n int) []byte {
	return binary.BigEndian.AppendUint32([]byte{0}, uint32(n))
}

// waitFor returns the first frame that match accepts, failing the test
// when the connection ends first or nothing comes within waitTimeout.
func (c *rawClient) waitFor(what string, match func(frame) bool) frame {
	c.t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				c.t.Fatalf("the connection ended (%v) before %s", c.err, what)
			}
			if match(f) {
				return f
			}
		case <-timeout:
			c.t.Fatalf("no %s within %s", what, waitTimeout)
		}
	}
}

// trailers waits for the trailers of stream id and returns its grpc-status.
func (c *rawClient) trailers(id uint32) int {
	c.t.Helper()
	f := c.waitFor("trailers of stream "+strconv.Itoa(int(id)), func(f frame) bool {
		return f.typ == http2.FrameHeaders && f.stream == id && f.flags.Has(http2.FlagHeadersEndStream)
	})
	c.t.Logf("stream %d: grpc-status %s, grpc-message %q", id, f.headers["grpc-status"], f.headers["grpc-message"])
	code, err := strconv.Atoi(f.headers["grpc-status"])
	require.NoError(c.t, err, "grpc-status %q", f.headers["grpc-status"])
	return code
}

// goAway waits for a GOAWAY, then for the connection to end.
func (c *rawClient) goAway() frame {
	c.t.Helper()
	f := c.waitFor("GOAWAY", func(f frame) bool { return f.typ == http2.FrameGoAway })
	c.closed()
	return f
}

// closed waits for the connection to end.
func (c *rawClient) closed() {
	c.t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case _, ok := <-c.frames:
			if !ok {
				return
			}
		case <-timeout:
			c.t.Fatalf("the connection did not end within %s", waitTimeout)
		}
	}
}

// selfSigned returns server credentials with a new self-signed certificate
// for 127.0.0.1, and client credentials that trust it.
func selfSigned(t *testing.T) (server, client credentials.TransportCredentials) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "h2guard test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12})
	client = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	return server, client
}
