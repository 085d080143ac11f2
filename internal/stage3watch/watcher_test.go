package stage3watch_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/internal/stage3watch"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
	"github.com/stage4/stage4/stage3client/testpki"
)

// serverName is the only name in the test server's certificate.
const serverName = "stage3.test"

// TestCheckClassifiesRealFailures dials real Stage-3 servers with the
// mistakes operators make and checks what Check and Classify make of the
// transport's errors, and that the hint names the flag that fixes it.
func TestCheckClassifiesRealFailures(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t, "stage3 test CA")
	otherCA := testpki.NewCA(t, "other CA")
	certFile, keyFile := ca.Issue(t, "server", x509.ExtKeyUsageServerAuth, serverName)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	require.NoError(t, err)
	serveTLS := func(mTLS bool) string {
		tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if mTLS {
			tc.ClientAuth, tc.ClientCAs = tls.RequireAndVerifyClientCert, ca.Pool
		}
		srv, err := stage3ref.NewServer(stage3ref.NewService(), grpc.Creds(credentials.NewTLS(tc)))
		require.NoError(t, err)
		t.Cleanup(func() { _ = srv.Close() })
		return srv.Addr
	}
	tlsAddr, mTLSAddr := serveTLS(false), serveTLS(true)
	plain, err := stage3ref.NewServer(stage3ref.NewService())
	require.NoError(t, err)
	t.Cleanup(func() { _ = plain.Close() })

	tests := []struct {
		name     string
		cfg      stage3client.Config
		want     stage3watch.Cause
		alsoOK   stage3watch.Cause // another cause the same fault may show as
		wantHint string
		wantOK   bool
	}{
		{name: "plaintext Stage-3 without health answers", cfg: stage3client.Config{Target: plain.Addr, Insecure: true}, wantOK: true},
		{name: "TLS to a plaintext Stage-3", cfg: stage3client.Config{Target: plain.Addr},
			want: stage3watch.CauseTLSToPlaintext, wantHint: "--stage3-insecure"},
		{name: "plaintext to a TLS Stage-3", cfg: stage3client.Config{Target: tlsAddr, Insecure: true},
			want: stage3watch.CauseClosedBeforePreface, wantHint: "drop --stage3-insecure"},
		{name: "a CA Stage-4 does not know", cfg: stage3client.Config{Target: tlsAddr, ServerName: serverName},
			want: stage3watch.CauseTLSUnknownAuthority, wantHint: "--stage3-ca-file"},
		{name: "another CA", cfg: stage3client.Config{Target: tlsAddr, ServerName: serverName, CAFile: otherCA.File},
			want: stage3watch.CauseTLSUnknownAuthority, wantHint: "--stage3-ca-file"},
		{name: "a name not in the certificate", cfg: stage3client.Config{Target: tlsAddr, CAFile: ca.File},
			want: stage3watch.CauseTLSNameMismatch, wantHint: "--stage3-server-name"},
		// With TLS 1.3 the server refuses the missing certificate after
		// the client's handshake is done: the client sees the alert, or
		// only a connection that broke, depending on timing.
		{name: "no client certificate for mTLS", cfg: stage3client.Config{Target: mTLSAddr, CAFile: ca.File, ServerName: serverName},
			want: stage3watch.CauseTLSClientCertificate, alsoOK: stage3watch.CauseConnectionReset, wantHint: "--stage3-cert-file"},
		{name: "TLS set up right", cfg: stage3client.Config{Target: tlsAddr, CAFile: ca.File, ServerName: serverName}, wantOK: true},
		{name: "a host name that does not resolve", cfg: stage3client.Config{Target: "stage3.no-such-host.invalid:443"},
			want: stage3watch.CauseNameResolution, wantHint: "does not resolve"},
		{name: "nothing listening", cfg: stage3client.Config{Target: "127.0.0.1:1", Insecure: true},
			want: stage3watch.CauseConnectionRefused, wantHint: "nothing accepts connections"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := stage3client.New(tt.cfg)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			err = c.Check(ctx)
			if tt.wantOK {
				require.NoError(t, err)
				require.Equal(t, stage3watch.CauseNone, stage3watch.Classify(err))
				return
			}
			require.Error(t, err)
			got := stage3watch.Classify(err)
			if tt.alsoOK == "" || got != tt.alsoOK {
				require.Equal(t, tt.want, got, "error: %v", err)
			}
			require.Contains(t, stage3watch.Hint(got, tt.cfg), tt.wantHint)
		})
	}
}

// TestCheckReadsHealth: a Stage-3 with grpc.health.v1 is asked about
// stage3.v1.Stage3Service, or about the server when it does not know that
// name; NOT_SERVING is a failure of its own cause.
func TestCheckReadsHealth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		set     map[string]healthpb.HealthCheckResponse_ServingStatus
		wantErr bool
	}{
		{name: "service serving", set: map[string]healthpb.HealthCheckResponse_ServingStatus{stage3v1.Stage3Service_ServiceDesc.ServiceName: healthpb.HealthCheckResponse_SERVING, "": healthpb.HealthCheckResponse_NOT_SERVING}},
		{name: "service not serving", set: map[string]healthpb.HealthCheckResponse_ServingStatus{stage3v1.Stage3Service_ServiceDesc.ServiceName: healthpb.HealthCheckResponse_NOT_SERVING}, wantErr: true},
		{name: "only the server's status, serving", set: map[string]healthpb.HealthCheckResponse_ServingStatus{"": healthpb.HealthCheckResponse_SERVING}},
		{name: "only the server's status, not serving", set: map[string]healthpb.HealthCheckResponse_ServingStatus{"": healthpb.HealthCheckResponse_NOT_SERVING}, wantErr: true},
	}
	// A mesh policy that lets Stage-4 call plans but not health: the
	// refusal comes from the other side, so Stage-3 is reachable.
	t.Run("health refused by a policy", func(t *testing.T) {
		t.Parallel()
		g := grpc.NewServer(grpc.ChainUnaryInterceptor(func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
			return nil, status.Error(codes.PermissionDenied, "RBAC: access denied")
		}))
		healthpb.RegisterHealthServer(g, health.NewServer())
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go func() { _ = g.Serve(lis) }()
		t.Cleanup(g.Stop)
		c, err := stage3client.New(stage3client.Config{Target: lis.Addr().String(), Insecure: true})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		require.NoError(t, c.Check(t.Context()))
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hs := health.NewServer()
			for svc, st := range tt.set {
				hs.SetServingStatus(svc, st)
			}
			g := grpc.NewServer()
			healthpb.RegisterHealthServer(g, hs)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			go func() { _ = g.Serve(lis) }()
			t.Cleanup(g.Stop)
			addr := lis.Addr().String()
			c, err := stage3client.New(stage3client.Config{Target: addr, Insecure: true})
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			err = c.Check(t.Context())
			if !tt.wantErr {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, stage3client.ErrNotServing)
			require.Equal(t, stage3watch.CauseNotServing, stage3watch.Classify(err))
		})
	}
}

// fakeChecker answers Check with the errors the test sends it, one per
// check, and signals each check.
type fakeChecker struct {
	answers chan error
}

func (f *fakeChecker) Check(ctx context.Context) error {
	select {
	case err := <-f.answers:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// syncBuffer is a log destination read while the watcher writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestWatcherReportsChanges: the first check is made by Start and
// reported whatever its outcome; later checks are reported (logged and
// passed to onChange) only when the state or the cause changes, and the
// metrics follow every check.
func TestWatcherReportsChanges(t *testing.T) {
	t.Parallel()
	refused := errors.New(`connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`)
	tlsErr := errors.New(`connection error: desc = "transport: authentication handshake failed: tls: first record does not look like a TLS handshake"`)
	checker := &fakeChecker{answers: make(chan error)}
	changes := make(chan error, 10)
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	w := stage3watch.New(checker, stage3client.Config{Target: "stage3.example:443"},
		stage3watch.WithInterval(time.Millisecond), stage3watch.WithTimeout(time.Minute),
		stage3watch.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))), stage3watch.WithRegisterer(reg),
		stage3watch.WithOnChange(func(err error) { changes <- err }))
	go func() { checker.answers <- refused }()
	require.NoError(t, w.Start())
	t.Cleanup(w.Stop)
	require.Equal(t, refused, <-changes, "the first check is reported")
	require.Equal(t, refused, w.Err())
	require.Contains(t, logs.String(), `msg="stage3 unreachable at start; not ready for plans until it answers" stage3_addr=stage3.example:443 cause=connection_refused hint="nothing accepts connections at --stage3-addr`)

	// The same failure again: nothing new to say. Then another cause,
	// then success, then success again.
	for _, answer := range []error{refused, refused, tlsErr, nil, nil} {
		checker.answers <- answer
	}
	checker.answers <- nil // the check before it has completed
	require.Equal(t, tlsErr, <-changes)
	require.NoError(t, <-changes)
	require.Empty(t, changes, "no report without a change")
	require.Contains(t, logs.String(), "cause=tls_to_plaintext")
	require.Contains(t, logs.String(), `msg="stage3 reachable again; ready for plans"`)
	require.Equal(t, 3, strings.Count(logs.String(), "\n"), "one line per change: %s", logs.String())

	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "," + l.GetValue()
			}
			got[name] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	require.Equal(t, map[string]float64{
		"stage4_stage3_reachable":                               1,
		"stage4_stage3_check_failures_total,connection_refused": 3,
		"stage4_stage3_check_failures_total,tls_to_plaintext":   1,
	}, got)
}
