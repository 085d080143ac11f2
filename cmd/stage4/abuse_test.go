package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/h2guard"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
)

// The abuse tests give serve their limits through the environment, which
// a binary without those limits ignores: run against one, they fail on
// what they assert rather than on an unknown flag.

// TestServeAbuseSlowBodies: eight connections each open an ExecutePlan,
// declare a 100-byte message and send a byte a second. Their calls hold
// none of the in-flight budget and end with DEADLINE_EXCEEDED
// (REQUEST_READ_TIMEOUT) after --request-read-timeout, while a normal
// client's ExecutePlan, ValidatePlan and health checks keep succeeding.
func TestServeAbuseSlowBodies(t *testing.T) {
	t.Parallel()
	const slow = 8
	gw := startGatewayOn(t, t.TempDir()+"/audit", []string{"STAGE4_REQUEST_READ_TIMEOUT=2s"}, nil, nil)

	stop := make(chan struct{})
	normal := keepCalling(t, gw, stop)

	var ended sync.WaitGroup
	for range slow {
		c := dialH2(t, gw.addr)
		require.NoError(t, c.headers(1, stage4v1.Stage4Service_ExecutePlan_FullMethodName, false))
		require.NoError(t, c.data(1, false, grpcPrefix(100)))
		go func() { // a byte a second, until the server ends the call
			for {
				if c.data(1, false, []byte{0}) != nil {
					return
				}
				select {
				case <-c.done:
					return
				case <-time.After(time.Second): // the trickle, not synchronisation
				}
			}
		}()
		ended.Go(func() {
			f := c.waitFor("trailers of the slow call", func(f h2Frame) bool {
				return f.typ == http2.FrameHeaders && f.stream == 1 && f.flags.Has(http2.FlagHeadersEndStream)
			})
			if f.typ != http2.FrameHeaders {
				return // waitFor failed the test
			}
			st := trailerStatus(t, f)
			if st.Code() != codes.DeadlineExceeded || rpcerr.Reason(st.Err()) != rpcerr.RequestReadTimeout {
				t.Errorf("the slow call ended with %v, reason %q", st.Err(), rpcerr.Reason(st.Err()))
			}
		})
	}
	ended.Wait()
	close(stop)
	counts := <-normal
	t.Logf("while the slow calls waited: %v", counts)
	for _, kind := range []string{"ExecutePlan", "ValidatePlan", "health"} {
		require.Positive(t, counts[kind], "%s calls succeeded", kind)
	}
	require.Contains(t, scrape(t, gw.metricsAddr), "stage4_http2_request_read_timeouts_total "+strconv.Itoa(slow))
}

// TestServeAbuseRapidReset: a connection that opens streams and resets
// them at once (HEADERS then RST_STREAM, CVE-2023-44487) gets GOAWAY
// ENHANCE_YOUR_CALM after about h2guard.MinResets of them and is closed,
// while a normal client's ExecutePlan keeps working.
func TestServeAbuseRapidReset(t *testing.T) {
	t.Parallel()
	const pairs = 20 * h2guard.MinResets
	gw := startGateway(t, nil, nil)
	stop := make(chan struct{})
	normal := keepCalling(t, gw, stop)

	c := dialH2(t, gw.addr)
	sent := make(chan int, 1)
	go func() {
		n := 0
		defer func() { sent <- n }()
		for ; n < pairs; n++ {
			id := uint32(2*n + 1)
			if c.headers(id, stage4v1.Stage4Service_ExecutePlan_FullMethodName, false) != nil ||
				c.do(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeCancel) }) != nil {
				return
			}
		}
	}()
	f := c.mustWaitFor("GOAWAY", func(f h2Frame) bool { return f.typ == http2.FrameGoAway })
	require.Equal(t, http2.ErrCodeEnhanceYourCalm, f.code)
	require.Equal(t, "rapid_reset", f.debug)
	require.Less(t, f.last, uint32(2*4*h2guard.MinResets), "GOAWAY within 4 x MinResets streams")
	c.waitClosed()
	t.Logf("%d pairs written before the connection closed; GOAWAY's last stream %d", <-sent, f.last)

	close(stop)
	counts := <-normal
	require.Positive(t, counts["ExecutePlan"])
	require.Contains(t, scrape(t, gw.metricsAddr), `stage4_http2_connections_closed_total{reason="rapid_reset"} 1`)
}

// TestServeAbuseSlowResponseReader: a client that grants no flow-control
// window takes no response; after --response-write-timeout its connection
// gets GOAWAY ENHANCE_YOUR_CALM and is closed, releasing what the response
// held, while a normal client keeps working.
func TestServeAbuseSlowResponseReader(t *testing.T) {
	t.Parallel()
	gw := startGatewayOn(t, t.TempDir()+"/audit", []string{"STAGE4_RESPONSE_WRITE_TIMEOUT=1s"}, nil, nil)
	stop := make(chan struct{})
	normal := keepCalling(t, gw, stop)

	c := dialH2(t, gw.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	req, err := proto.Marshal(&stage4v1.ValidatePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)
	require.NoError(t, c.headers(1, stage4v1.Stage4Service_ValidatePlan_FullMethodName, false))
	require.NoError(t, c.data(1, true, append(grpcPrefix(len(req)), req...)))
	f := c.mustWaitFor("GOAWAY", func(f h2Frame) bool { return f.typ == http2.FrameGoAway })
	require.Equal(t, http2.ErrCodeEnhanceYourCalm, f.code)
	require.Equal(t, "slow_reader", f.debug)
	c.waitClosed()

	close(stop)
	counts := <-normal
	require.Positive(t, counts["ValidatePlan"])
	require.Contains(t, scrape(t, gw.metricsAddr), `stage4_http2_connections_closed_total{reason="slow_reader"} 1`)
}

// keepCalling calls ExecutePlan, ValidatePlan and a health check in turn
// on gw's client, each with a 10 s deadline (far more than a call takes,
// far less than the waits the abuse used to cause), until stop is closed;
// any failure fails the test. It then sends the number of successes by
// kind.
func keepCalling(t *testing.T, gw *stage4Process, stop <-chan struct{}) <-chan map[string]int {
	t.Helper()
	counts := make(chan map[string]int, 1)
	plan := testkit.Plan(t)
	health := healthpb.NewHealthClient(gw.conn)
	calls := []struct {
		kind string
		do   func(ctx context.Context) error
	}{
		{"ExecutePlan", func(ctx context.Context) error {
			_, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: plan})
			return err
		}},
		{"ValidatePlan", func(ctx context.Context) error {
			_, err := gw.client.ValidatePlan(ctx, &stage4v1.ValidatePlanRequest{Plan: plan})
			return err
		}},
		{"health", func(ctx context.Context) error {
			_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}},
	}
	go func() {
		n := map[string]int{}
		defer func() { counts <- n }()
		for {
			for _, call := range calls {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				err := call.do(ctx)
				cancel()
				if err != nil {
					t.Errorf("a normal %s call failed: %v", call.kind, err)
					return
				}
				n[call.kind]++
			}
		}
	}()
	return counts
}

// grpcPrefix is the gRPC prefix of an uncompressed message of n bytes.
func grpcPrefix(n int) []byte {
	return binary.BigEndian.AppendUint32([]byte{0}, uint32(n))
}

// trailerStatus is the status in the trailers f.
func trailerStatus(t *testing.T, f h2Frame) *status.Status {
	t.Helper()
	if d, ok := f.headers["grpc-status-details-bin"]; ok {
		b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(d, "="))
		require.NoError(t, err)
		var sp spb.Status
		require.NoError(t, proto.Unmarshal(b, &sp))
		return status.FromProto(&sp)
	}
	code, err := strconv.Atoi(f.headers["grpc-status"])
	require.NoError(t, err)
	return status.New(codes.Code(code), f.headers["grpc-message"])
}

// h2Frame is what an h2Conn read: a copy of the parts tests look at.
type h2Frame struct {
	typ     http2.FrameType
	stream  uint32
	flags   http2.Flags
	code    http2.ErrCode // GOAWAY
	debug   string        // GOAWAY
	last    uint32        // GOAWAY's last stream
	headers map[string]string
}

// h2Conn is a client that writes HTTP/2 frames as no gRPC client would,
// and reads every frame the server sends onto frames.
type h2Conn struct {
	t      *testing.T
	mu     sync.Mutex // guards fr's writes and enc
	fr     *http2.Framer
	enc    *hpack.Encoder
	block  bytes.Buffer
	frames chan h2Frame
	done   chan struct{} // closed when the connection has ended
	err    error         // why, once done
}

// dialH2 connects to addr and sends the preface and settings.
func dialH2(t *testing.T, addr string, settings ...http2.Setting) *h2Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	c := &h2Conn{t: t, fr: http2.NewFramer(conn, conn), frames: make(chan h2Frame, 1<<16), done: make(chan struct{})}
	c.enc = hpack.NewEncoder(&c.block)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	_, err = conn.Write([]byte(http2.ClientPreface))
	require.NoError(t, err)
	require.NoError(t, c.fr.WriteSettings(settings...))
	go c.read()
	return c
}

func (c *h2Conn) read() {
	defer close(c.done)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.err = err
			return
		}
		h := h2Frame{typ: f.Header().Type, stream: f.Header().StreamID, flags: f.Header().Flags}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.do(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.GoAwayFrame:
			h.code, h.debug, h.last = f.ErrCode, string(f.DebugData()), f.LastStreamID
		case *http2.MetaHeadersFrame:
			h.headers = map[string]string{}
			for _, hf := range f.Fields {
				h.headers[hf.Name] = hf.Value
			}
		}
		select {
		case c.frames <- h:
		default: // nobody looks at that many
		}
	}
}

// do runs f with the framer.
func (c *h2Conn) do(f func(fr *http2.Framer) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return f(c.fr)
}

// headers opens stream id for method.
func (c *h2Conn) headers(id uint32, method string, endStream bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.block.Reset()
	for _, hf := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: method},
		{Name: ":authority", Value: "localhost"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		if err := c.enc.WriteField(hf); err != nil {
			return err
		}
	}
	return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block.Bytes(), EndStream: endStream, EndHeaders: true})
}

// data sends a DATA frame.
func (c *h2Conn) data(id uint32, endStream bool, b []byte) error {
	return c.do(func(fr *http2.Framer) error { return fr.WriteData(id, endStream, b) })
}

// waitFor returns the first frame that match accepts; it fails the test
// (and returns the zero frame) when the connection ends first or nothing
// comes within waitTimeout. It may run on any goroutine.
func (c *h2Conn) waitFor(what string, match func(h2Frame) bool) h2Frame {
	timeout := time.After(waitTimeout)
	for {
		select {
		case f := <-c.frames:
			if match(f) {
				return f
			}
		case <-c.done:
			// Frames read before the end may still be queued.
			for {
				select {
				case f := <-c.frames:
					if match(f) {
						return f
					}
				default:
					c.t.Errorf("the connection ended (%v) before %s", c.err, what)
					return h2Frame{}
				}
			}
		case <-timeout:
			c.t.Errorf("no %s within %s", what, waitTimeout)
			return h2Frame{}
		}
	}
}

// mustWaitFor is waitFor on the test's goroutine, which it ends when
// waitFor fails.
func (c *h2Conn) mustWaitFor(what string, match func(h2Frame) bool) h2Frame {
	c.t.Helper()
	f := c.waitFor(what, match)
	if f.typ == 0 && f.stream == 0 && f.headers == nil && f.debug == "" {
		c.t.FailNow()
	}
	return f
}

// waitClosed waits for the server to end the connection.
func (c *h2Conn) waitClosed() {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(waitTimeout):
		c.t.Fatalf("the connection did not end within %s", waitTimeout)
	}
}
