package stage3client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/internal/rpcerr"
)

// Defaults for the zero values of Config's limits.
const (
	DefaultMaxDeadline     = 30 * time.Second
	DefaultMaxMessageBytes = 4 << 20
)

// forwardedMetadata is the allow-list of incoming metadata keys passed on to
// Stage-3: request correlation. Anything else, notably authorization, stays
// in Stage-4. W3C trace context is not copied here: OpenTelemetry's
// propagator writes it, parsed and bounded, from an option of New's (the
// gateway passes otelgrpc's stats handler when it traces, as the child of
// Stage-4's own span, and telemetry.InjectUnaryClientInterceptor when not).
var forwardedMetadata = []string{"x-request-id"}

// Bounds on the forwarded metadata, whatever the caller's header list may
// hold: an id is short, and a caller must not be able to make Stage-4 send
// Stage-3 megabytes of headers. Values beyond them are dropped, not
// cut: a shortened id would correlate with the wrong request, and the call
// must not fail for a correlation header.
const (
	// MaxForwardedValueBytes is the longest metadata value forwarded.
	MaxForwardedValueBytes = 1024
	// MaxForwardedValues is how many values of one key are forwarded; the
	// first ones are kept.
	MaxForwardedValues = 4
)

// Config says how to reach Stage-3.
type Config struct {
	// Target is the gRPC target, for example "127.0.0.1:9000" or
	// "dns:///stage3.mesh:8443".
	Target string
	// Insecure selects plaintext, for loopback or a mesh whose sidecar does
	// TLS; otherwise TLS is used.
	Insecure bool
	// CAFile holds PEM roots to verify Stage-3; empty means the system roots.
	CAFile string
	// CertFile and KeyFile are the client certificate for mTLS: both or
	// neither.
	CertFile, KeyFile string
	// ServerName overrides the name verified in Stage-3's certificate.
	ServerName string
	// MaxDeadline bounds a Stage-3 call when the caller set no deadline or a
	// later one; 0 means DefaultMaxDeadline.
	MaxDeadline time.Duration
	// MaxMessageBytes limits requests and responses; 0 means
	// DefaultMaxMessageBytes.
	MaxMessageBytes int
}

// Client calls Stage-3. It is safe for concurrent use.
type Client struct {
	conn            *grpc.ClientConn
	stage3          stage3v1.Stage3ServiceClient
	maxDeadline     time.Duration
	maxMessageBytes int
}

// EffectiveMaxDeadline is the bound on one Stage-3 call that a client made
// from c applies: MaxDeadline, or DefaultMaxDeadline when it is 0.
func (c Config) EffectiveMaxDeadline() time.Duration {
	if c.MaxDeadline == 0 {
		return DefaultMaxDeadline
	}
	return c.MaxDeadline
}

// New creates a client; it does not connect until the first call. opts come
// before Stage-4's own options (for example a bufconn dialer in tests or
// metrics interceptors in cmd) and cannot override them.
func New(cfg Config, opts ...grpc.DialOption) (*Client, error) {
	if cfg.Target == "" {
		return nil, errors.New("stage3 target is empty")
	}
	if cfg.MaxDeadline < 0 || cfg.MaxMessageBytes < 0 {
		return nil, errors.New("stage3 max deadline and max message bytes must not be negative")
	}
	c := &Client{maxDeadline: cfg.EffectiveMaxDeadline(), maxMessageBytes: cfg.MaxMessageBytes}
	if c.maxMessageBytes == 0 {
		c.maxMessageBytes = DefaultMaxMessageBytes
	}
	creds, err := transportCredentials(cfg)
	if err != nil {
		return nil, err
	}
	opts = slices.Concat(opts, []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDisableRetry(),
		// A service config from the resolver could change retries, timeouts
		// or size limits behind our back.
		grpc.WithDisableServiceConfig(),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallSendMsgSize(c.maxMessageBytes),
			grpc.MaxCallRecvMsgSize(c.maxMessageBytes),
		),
	})
	c.conn, err = grpc.NewClient(cfg.Target, opts...)
	if err != nil {
		return nil, fmt.Errorf("create stage3 client: %w", err)
	}
	c.stage3 = stage3v1.NewStage3ServiceClient(c.conn)
	return c, nil
}

func transportCredentials(cfg Config) (credentials.TransportCredentials, error) {
	if cfg.Insecure {
		if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" || cfg.ServerName != "" {
			return nil, errors.New("stage3: TLS settings given for an insecure connection")
		}
		return insecure.NewCredentials(), nil
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("stage3 mTLS needs both a certificate and a key file")
	}
	// TLS 1.2 rather than 1.3 as the floor: Stage-3 is a black box whose TLS
	// stack Stage-4 does not control, and 1.2 with Go's defaults is sound.
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.ServerName}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read stage3 CA file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("stage3 CA file %s holds no PEM certificate", cfg.CAFile)
		}
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load stage3 client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(tc), nil
}

// Execute forwards req to Stage-3 in exactly one attempt and returns Stage-3's
// response unchanged, or an error mapped as the package doc describes. req is
// not modified.
func (c *Client) Execute(ctx context.Context, req *stage3v1.ExecuteMultiDomainPlanRequest) (*stage3v1.ExecuteMultiDomainPlanResponse, error) {
	// grpc-go would refuse an oversized plan only after opening the stream,
	// which would look like an unknown outcome.
	if size := proto.Size(req); size > c.maxMessageBytes {
		return nil, tooLarge(size, c.maxMessageBytes)
	}
	callCtx, cancel := context.WithTimeout(ctx, c.maxDeadline)
	defer cancel()
	callCtx = metadata.NewOutgoingContext(callCtx, outgoingMetadata(ctx))

	var p peer.Peer
	resp, err := c.stage3.ExecuteMultiDomainPlan(callCtx, req, grpc.Peer(&p))
	if err != nil {
		return nil, mapError(err, p.Addr != nil, errors.Is(ctx.Err(), context.Canceled))
	}
	return resp, nil
}

// ExecuteEncoded is Execute for a request already in its binary protobuf
// encoding, which is sent as it is: no second encoding of a plan that the
// caller has encoded anyway. A stage4.v1.Plan's encoding is such a request
// (the two messages share field numbers and types, see server.ToStage3).
// req must not change during the call.
//
// It repeats Execute's few lines rather than sharing them through a
// helper: one more frame on Execute's path made every call of the bare
// proxy that the load tool measures grow its goroutine stack once more.
func (c *Client) ExecuteEncoded(ctx context.Context, req []byte) (*stage3v1.ExecuteMultiDomainPlanResponse, error) {
	if len(req) > c.maxMessageBytes {
		return nil, tooLarge(len(req), c.maxMessageBytes)
	}
	callCtx, cancel := context.WithTimeout(ctx, c.maxDeadline)
	defer cancel()
	callCtx = metadata.NewOutgoingContext(callCtx, outgoingMetadata(ctx))

	var p peer.Peer
	// What the generated client does, with a message only the encoded
	// codec can send.
	resp := new(stage3v1.ExecuteMultiDomainPlanResponse)
	err := c.conn.Invoke(callCtx, stage3v1.Stage3Service_ExecuteMultiDomainPlan_FullMethodName, encodedMessage(req), resp,
		grpc.StaticMethod(), encodedCallOption, grpc.Peer(&p))
	if err != nil {
		return nil, mapError(err, p.Addr != nil, errors.Is(ctx.Err(), context.Canceled))
	}
	return resp, nil
}

// DescribeMethods asks Stage-3 for its catalogue of methods
// (stage3.v1.Stage3Service/DescribeMethods) in one attempt, bounded by ctx
// and MaxDeadline. opts follow the client's own call options, so that
// grpc.MaxCallRecvMsgSize can hold the answer below MaxMessageBytes. Its
// errors are the status that Stage-3 or the transport gave, not mapped as
// Execute's are (no plan is at stake): UNIMPLEMENTED means that Stage-3
// does not offer DescribeMethods.
func (c *Client) DescribeMethods(ctx context.Context, req *stage3v1.DescribeMethodsRequest, opts ...grpc.CallOption) (*stage3v1.DescribeMethodsResponse, error) {
	callCtx, cancel := context.WithTimeout(ctx, c.maxDeadline)
	defer cancel()
	callCtx = metadata.NewOutgoingContext(callCtx, outgoingMetadata(ctx))
	resp, err := c.stage3.DescribeMethods(callCtx, req, opts...)
	if err != nil {
		return nil, fmt.Errorf("stage3 describe methods: %w", err)
	}
	return resp, nil
}

// tooLarge is the error of a plan over the size limit, which is not sent.
func tooLarge(size, limit int) error {
	return rpcerr.New(codes.InvalidArgument, rpcerr.PlanInvalid,
		fmt.Sprintf("plan is %d bytes, over the %d-byte limit for Stage-3", size, limit), nil)
}

// RequestIDHeader is the metadata key that carries an ExecutePlan call's
// request_id to Stage-3 (see WithRequestID).
const RequestIDHeader = "x-stage4-request-id"

type requestIDKey struct{}

// WithRequestID returns a context with which Execute and ExecuteEncoded
// send id to Stage-3 as the metadata RequestIDHeader: the caller's key of
// the intent (ExecutePlanRequest.request_id), which Stage-4 has validated.
// An empty id sends nothing.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// outgoingMetadata is a new metadata holding only the allow-listed keys of the
// caller's incoming metadata, within the bounds above, and the request id of
// WithRequestID; outgoing metadata already in ctx is dropped too.
func outgoingMetadata(ctx context.Context) metadata.MD {
	in, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	if id, _ := ctx.Value(requestIDKey{}).(string); id != "" {
		out[RequestIDHeader] = []string{id}
	}
	for _, k := range forwardedMetadata {
		n := 0
		for _, v := range in.Get(k) {
			if len(v) <= MaxForwardedValueBytes && n < MaxForwardedValues {
				out.Append(k, v)
				n++
			}
		}
	}
	return out
}

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("close stage3 connection: %w", err)
	}
	return nil
}
