package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// testCA is a throwaway certificate authority for TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	dir  string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stage4 test CA"},
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
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	ca := &testCA{cert: cert, key: key, pool: pool, dir: t.TempDir()}
	ca.writePEM(t, "ca.pem", "CERTIFICATE", der)
	return ca
}

func (ca *testCA) writePEM(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(ca.dir, name)
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
	return path
}

// issue signs a leaf certificate for 127.0.0.1 with usage and writes it and
// its key as name.pem and name-key.pem.
func (ca *testCA) issue(t *testing.T, name string, serial int64, usage x509.ExtKeyUsage) (certFile, keyFile string, pair tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile = ca.writePEM(t, name+".pem", "CERTIFICATE", der)
	keyFile = ca.writePEM(t, name+"-key.pem", "EC PRIVATE KEY", keyDER)
	pair, err = tls.LoadX509KeyPair(certFile, keyFile)
	require.NoError(t, err)
	return certFile, keyFile, pair
}

// TestServeMutualTLS runs serve with --tls-client-ca-file: a client with a
// certificate from that CA gets through, one without is refused in the
// handshake.
func TestServeMutualTLS(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	serverCert, serverKey, _ := ca.issue(t, "server", 2, x509.ExtKeyUsageServerAuth)
	_, _, clientPair := ca.issue(t, "client", 3, x509.ExtKeyUsageClientAuth)

	s4 := start(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
		"--stage3-addr", "127.0.0.1:1", "--stage3-insecure", // never called here
		"--audit-log", filepath.Join(t.TempDir(), "audit.jsonl"),
		"--tls-cert-file", serverCert, "--tls-key-file", serverKey, "--tls-client-ca-file", filepath.Join(ca.dir, "ca.pem"))
	addr, metricsAddr := s4.servingAddr(t)
	require.Empty(t, metricsAddr, "an empty --metrics-listen turns metrics off")

	tests := []struct {
		name    string
		certs   []tls.Certificate
		wantErr bool
	}{
		{name: "client certificate from the CA", certs: []tls.Certificate{clientPair}},
		{name: "no client certificate", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds := credentials.NewTLS(&tls.Config{RootCAs: ca.pool, Certificates: tt.certs, MinVersion: tls.VersionTLS12})
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
			require.NoError(t, err)
			defer conn.Close()
			res, err := healthpb.NewHealthClient(conn).Check(testContext(t), &healthpb.HealthCheckRequest{})
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, healthpb.HealthCheckResponse_SERVING, res.GetStatus())
		})
	}

	require.NoError(t, s4.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, s4.exitCode(t))
}
