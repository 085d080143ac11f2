package stage3client_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
	"github.com/stage4/stage4/stage3client/testpki"
)

// serverName is the only name in the server certificate: no IP SAN, so a
// client dialing 127.0.0.1 must set Config.ServerName.
const serverName = "stage3.test"

// pki is a throwaway certificate authority with server and client
// certificates, written as PEM files.
type pki struct {
	ca                    *x509.CertPool
	caFile, otherCAFile   string
	serverCert, serverKey string
	clientCert, clientKey string
	notPEM                string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca := testpki.NewCA(t, "stage3 test CA")
	p := &pki{ca: ca.Pool, caFile: ca.File, otherCAFile: testpki.NewCA(t, "other CA").File}
	p.serverCert, p.serverKey = ca.Issue(t, "server", x509.ExtKeyUsageServerAuth, serverName)
	p.clientCert, p.clientKey = ca.Issue(t, "client", x509.ExtKeyUsageClientAuth)
	p.notPEM = filepath.Join(t.TempDir(), "not.pem")
	require.NoError(t, os.WriteFile(p.notPEM, []byte("not a certificate\n"), 0o600))
	return p
}

// startTLS serves a reference Stage-3 over loopback TCP with TLS, requiring
// a client certificate from the CA when mTLS is set.
func startTLS(t *testing.T, p *pki, mTLS bool) *stage3ref.Server {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	require.NoError(t, err)
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if mTLS {
		tc.ClientAuth, tc.ClientCAs = tls.RequireAndVerifyClientCert, p.ca
	}
	srv, err := stage3ref.NewServer(stage3ref.NewService(), grpc.Creds(credentials.NewTLS(tc)))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	return srv
}

func TestExecuteOverTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	tests := []struct {
		name     string
		mTLS     bool
		cfg      stage3client.Config
		wantCode codes.Code
	}{
		{name: "TLS", cfg: stage3client.Config{CAFile: p.caFile, ServerName: serverName}, wantCode: codes.OK},
		{name: "mTLS", mTLS: true,
			cfg:      stage3client.Config{CAFile: p.caFile, ServerName: serverName, CertFile: p.clientCert, KeyFile: p.clientKey},
			wantCode: codes.OK},
		{name: "mTLS server, no client certificate", mTLS: true, cfg: stage3client.Config{CAFile: p.caFile, ServerName: serverName}, wantCode: codes.Unavailable},
		{name: "server certificate from another CA", cfg: stage3client.Config{CAFile: p.otherCAFile, ServerName: serverName}, wantCode: codes.Unavailable},
		{name: "server certificate not in system roots", cfg: stage3client.Config{ServerName: serverName}, wantCode: codes.Unavailable},
		{name: "name mismatch without ServerName", cfg: stage3client.Config{CAFile: p.caFile}, wantCode: codes.Unavailable},
		{name: "plaintext client", cfg: stage3client.Config{Insecure: true}, wantCode: codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startTLS(t, p, tt.mTLS)
			tt.cfg.Target = srv.Addr
			_, err := newClient(t, tt.cfg).Execute(t.Context(), upperPlan(t, "x"))
			require.Equal(t, tt.wantCode, status.Code(err), "error: %v", err)
			wantCalls := 1
			if tt.wantCode != codes.OK {
				requireStage4Error(t, err, codes.Unavailable, rpcerr.Stage3NotReached)
				wantCalls = 0
			}
			require.Equal(t, wantCalls, srv.Service.Calls())
		})
	}
}
