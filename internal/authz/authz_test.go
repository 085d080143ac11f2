package authz_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/authz"
	"github.com/stage4/stage4/internal/ratelog"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/stage3client/testpki"
)

// Identities of the test certificates.
const (
	auditorURI = "spiffe://stage4.test/ns/audit/sa/auditor"
	auditorDNS = "auditor.stage4.test"
	otherURI   = "spiffe://stage4.test/ns/apps/sa/planner"
)

// stub answers every Stage4Service method with an empty success, so that a
// test sees only what the interceptor decides.
type stub struct {
	stage4v1.UnimplementedStage4ServiceServer
}

func (stub) ExecutePlan(context.Context, *stage4v1.ExecutePlanRequest) (*stage4v1.ExecutePlanResponse, error) {
	return &stage4v1.ExecutePlanResponse{}, nil
}

func (stub) ValidatePlan(context.Context, *stage4v1.ValidatePlanRequest) (*stage4v1.ValidatePlanResponse, error) {
	return &stage4v1.ValidatePlanResponse{}, nil
}

func (stub) ListAuditEvents(context.Context, *stage4v1.ListAuditEventsRequest) (*stage4v1.ListAuditEventsResponse, error) {
	return &stage4v1.ListAuditEventsResponse{}, nil
}

// pki is a CA with a server certificate and client certificates whose
// SANs the tests choose among.
type pki struct {
	ca      *testpki.CA
	server  tls.Certificate
	clients map[string]tls.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca := testpki.NewCA(t, "authz test CA")
	load := func(certFile, keyFile string) tls.Certificate {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		require.NoError(t, err)
		return pair
	}
	return &pki{
		ca:     ca,
		server: load(ca.Issue(t, "server", x509.ExtKeyUsageServerAuth, "bufnet")),
		clients: map[string]tls.Certificate{
			"uri":   load(ca.Issue(t, "uri", x509.ExtKeyUsageClientAuth, auditorURI)),
			"dns":   load(ca.Issue(t, "dns", x509.ExtKeyUsageClientAuth, auditorDNS)),
			"other": load(ca.Issue(t, "other", x509.ExtKeyUsageClientAuth, otherURI, "planner.stage4.test")),
		},
	}
}

// serveTLS serves the stub over bufconn behind the interceptor, with TLS
// whose client certificates are optional, so that anonymous and
// authenticated callers reach the same server.
func (p *pki) serveTLS(t *testing.T, icpt grpc.UnaryServerInterceptor) *bufconn.Listener {
	t.Helper()
	creds := credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{p.server},
		ClientCAs: p.ca.Pool, ClientAuth: tls.VerifyClientCertIfGiven,
	})
	return serve(t, icpt, grpc.Creds(creds))
}

func serve(t *testing.T, icpt grpc.UnaryServerInterceptor, opts ...grpc.ServerOption) *bufconn.Listener {
	t.Helper()
	srv := grpc.NewServer(append(opts, grpc.ChainUnaryInterceptor(icpt))...)
	stage4v1.RegisterStage4ServiceServer(srv, stub{})
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis
}

func dial(t *testing.T, lis *bufconn.Listener, creds credentials.TransportCredentials) stage4v1.Stage4ServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return stage4v1.NewStage4ServiceClient(conn)
}

func mustReaders(t *testing.T, s string) authz.Readers {
	t.Helper()
	r, err := authz.ParseReaders(s)
	require.NoError(t, err)
	return r
}

func TestListAuditEventsNeedsAnAllowedIdentity(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	tests := []struct {
		name    string
		readers string
		client  string // key of p.clients; "" for TLS without a client certificate
		plain   bool   // plaintext instead of TLS
		allowed bool
	}{
		{name: "anonymous plaintext caller", readers: auditorURI, plain: true},
		{name: "TLS caller without a certificate", readers: auditorURI},
		{name: "listed URI SAN", readers: auditorURI, client: "uri", allowed: true},
		{name: "listed DNS SAN", readers: auditorDNS, client: "dns", allowed: true},
		{name: "one of several listed", readers: otherURI + ", " + auditorDNS, client: "dns", allowed: true},
		{name: "unlisted identity", readers: auditorURI + "," + auditorDNS, client: "other"},
		{name: "empty list allows nobody", readers: "", client: "uri"},
		{name: "a listed subject name is no SAN", readers: "CN=uri", client: "uri"},
		{name: "* allows a plaintext caller", readers: "*", plain: true, allowed: true},
		{name: "* allows any certificate", readers: "*", client: "other", allowed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			icpt := authz.UnaryServerInterceptor(mustReaders(t, tt.readers), authz.WithRegisterer(reg))
			var client stage4v1.Stage4ServiceClient
			if tt.plain {
				client = dial(t, serve(t, icpt), insecure.NewCredentials())
			} else {
				conf := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: p.ca.Pool, ServerName: "bufnet"}
				if tt.client != "" {
					conf.Certificates = []tls.Certificate{p.clients[tt.client]}
				}
				client = dial(t, p.serveTLS(t, icpt), credentials.NewTLS(conf))
			}

			_, err := client.ListAuditEvents(t.Context(), &stage4v1.ListAuditEventsRequest{})
			wantDenied := 0.0
			if tt.allowed {
				require.NoError(t, err)
			} else {
				require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
				require.Equal(t, rpcerr.AuditReadDenied, rpcerr.Reason(err))
				wantDenied = 1
			}
			require.InDelta(t, wantDenied, deniedCount(t, reg), 0)

			// The proofs read the audit log too.
			for name, call := range map[string]func() error{
				"GetCheckpoint": func() error {
					_, err := client.GetCheckpoint(t.Context(), &stage4v1.GetCheckpointRequest{})
					return err
				},
				"GetInclusionProof": func() error {
					_, err := client.GetInclusionProof(t.Context(), &stage4v1.GetInclusionProofRequest{Sequence: 1})
					return err
				},
				"GetConsistencyProof": func() error {
					_, err := client.GetConsistencyProof(t.Context(), &stage4v1.GetConsistencyProofRequest{FirstSize: 1, SecondSize: 2})
					return err
				},
			} {
				denied := status.Code(call()) == codes.PermissionDenied
				require.Equal(t, !tt.allowed, denied, name)
			}

			// The other methods never ask who calls.
			_, err = client.ExecutePlan(t.Context(), &stage4v1.ExecutePlanRequest{})
			require.NoError(t, err)
			_, err = client.ValidatePlan(t.Context(), &stage4v1.ValidatePlanRequest{})
			require.NoError(t, err)
		})
	}
}

// deniedCount returns the ListAuditEvents count of
// stage4_authz_denied_total in reg.
func deniedCount(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != "stage4_authz_denied_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if m.GetLabel()[0].GetValue() == stage4v1.Stage4Service_ListAuditEvents_FullMethodName {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatal("no stage4_authz_denied_total series for ListAuditEvents")
	return 0
}

// lockedBuffer is a bytes.Buffer that the server's goroutines may write
// while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// TestDenialsAreLoggedRateLimited sends a burst of denied calls: the first
// is logged at once with the caller's identities, the rest are counted in
// the next line.
func TestDenialsAreLoggedRateLimited(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	var buf lockedBuffer
	var clock atomic.Int64 // seconds; the server's goroutines read it
	rl := ratelog.New(slog.New(slog.NewJSONHandler(&buf, nil)), time.Minute,
		ratelog.WithClock(func() time.Time { return time.Unix(clock.Load(), 0) }), ratelog.WithoutFlush())
	lis := p.serveTLS(t, authz.UnaryServerInterceptor(mustReaders(t, auditorURI), authz.WithLogger(rl)))
	client := dial(t, lis, credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: p.ca.Pool, ServerName: "bufnet",
		Certificates: []tls.Certificate{p.clients["other"]},
	}))
	for range 50 {
		_, err := client.ListAuditEvents(t.Context(), &stage4v1.ListAuditEventsRequest{})
		require.Equal(t, codes.PermissionDenied, status.Code(err))
	}
	clock.Add(60)
	_, err := client.ListAuditEvents(t.Context(), &stage4v1.ListAuditEventsRequest{})
	require.Equal(t, codes.PermissionDenied, status.Code(err))

	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	require.Len(t, lines, 2, "%s", buf.Bytes())
	require.Contains(t, string(lines[0]), `"msg":"audit read denied"`)
	require.Contains(t, string(lines[0]), `"peer.uri_sans":["`+otherURI+`"],"peer.dns_sans":["planner.stage4.test"]`)
	require.Contains(t, string(lines[0]), `"grpc.method":"/stage4.v1.Stage4Service/ListAuditEvents"`)
	require.NotContains(t, string(lines[0]), `"suppressed"`)
	require.Contains(t, string(lines[1]), `"suppressed":49`)
}

func TestParseReaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    string // String() of the result
		anyone  bool
		wantErr string
	}{
		{name: "empty allows nobody", in: "", want: ""},
		{name: "blank allows nobody", in: "  ", want: ""},
		{name: "star", in: "*", want: "*", anyone: true},
		{name: "star with spaces", in: " * ", want: "*", anyone: true},
		{name: "list is trimmed, sorted, deduplicated", in: " b.example , spiffe://td/x,b.example", want: "b.example,spiffe://td/x"},
		{name: "star with a name", in: "*,a.example", wantErr: "cannot be combined"},
		{name: "empty entry", in: "a.example,,b.example", wantErr: "empty entry"},
		{name: "trailing comma", in: "a.example,", wantErr: "empty entry"},
		{name: "wildcard inside a name", in: "*.example", wantErr: "no spaces or wildcards"},
		{name: "space inside a name", in: "a example", wantErr: "no spaces or wildcards"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var r authz.Readers
			err := r.Set(tt.in)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, r.String())
			require.Equal(t, tt.anyone, r.AllowsAnyone())
			again, err := authz.ParseReaders(r.String())
			require.NoError(t, err)
			require.Equal(t, r, again, "String must parse back to the same list")
		})
	}
}
