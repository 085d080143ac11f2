package main

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/stage3client/testpki"
)

// TestServeMutualTLS runs serve with --tls-client-ca-file: a client with a
// certificate from that CA gets through, one without is refused in the
// handshake.
func TestServeMutualTLS(t *testing.T) {
	t.Parallel()
	ca := testpki.NewCA(t, "stage4 test CA")
	serverCert, serverKey := ca.Issue(t, "server", x509.ExtKeyUsageServerAuth, "127.0.0.1")
	clientPair, err := tls.LoadX509KeyPair(ca.Issue(t, "client", x509.ExtKeyUsageClientAuth))
	require.NoError(t, err)

	s4 := start(t, nil, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
		"--stage3-addr", "127.0.0.1:1", "--stage3-insecure", // never called here
		"--audit-log", filepath.Join(t.TempDir(), "audit"),
		"--tls-cert-file", serverCert, "--tls-key-file", serverKey, "--tls-client-ca-file", ca.File)
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
			creds := credentials.NewTLS(&tls.Config{RootCAs: ca.Pool, Certificates: tt.certs, MinVersion: tls.VersionTLS12})
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
			require.NoError(t, err)
			defer conn.Close()
			// Liveness: readiness is NOT_SERVING, as Stage-3 is not there.
			res, err := healthpb.NewHealthClient(conn).Check(testContext(t), &healthpb.HealthCheckRequest{Service: gateway.LivenessService})
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
