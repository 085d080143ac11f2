package stage3client_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/server/rpcerr"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// serverName is the only name in the server certificate: no IP SAN, so a
// client dialing 127.0.0.1 must set Config.ServerName.
const serverName = "stage3.test"

// pki is a throwaway certificate authority with server and client
// certificates, written as PEM files in a temporary directory.
type pki struct {
	dir                   string
	ca                    *x509.CertPool
	caFile, otherCAFile   string
	serverCert, serverKey string
	clientCert, clientKey string
	notPEM                string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	caCert, caKey := newCA(t)
	p.ca = x509.NewCertPool()
	p.ca.AddCert(caCert)
	p.caFile = writePEM(t, p.dir, "ca.pem", "CERTIFICATE", caCert.Raw)
	otherCA, _ := newCA(t)
	p.otherCAFile = writePEM(t, p.dir, "other-ca.pem", "CERTIFICATE", otherCA.Raw)
	p.serverCert, p.serverKey = newLeaf(t, p.dir, "server", caCert, caKey, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = newLeaf(t, p.dir, "client", caCert, caKey, x509.ExtKeyUsageClientAuth)
	p.notPEM = filepath.Join(p.dir, "not.pem")
	require.NoError(t, os.WriteFile(p.notPEM, []byte("not a certificate\n"), 0o600))
	return p
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stage3 test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert, key
}

func newLeaf(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{serverName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+"-key.pem", "PRIVATE KEY", keyDER)
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
	return path
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
