package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/internal/testkit"
	"github.com/stage4/stage4/stage3client/testpki"
)

// TestServeDeniesAuditReadsByDefault: an anonymous plaintext caller of a
// default serve cannot list the audit log, while plans still execute; the
// denial is logged and counted.
func TestServeDeniesAuditReadsByDefault(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, nil, nil)
	ctx := testContext(t)

	_, err := gw.client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)
	_, err = gw.client.ValidatePlan(ctx, &stage4v1.ValidatePlanRequest{Plan: testkit.Plan(t)})
	require.NoError(t, err)
	_, err = gw.client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.Equal(t, rpcerr.AuditReadDenied, rpcerr.Reason(err))

	gw.stage4.stderr.waitForLog(t, "audit read denied", map[string]any{"grpc.method": stage4v1.Stage4Service_ListAuditEvents_FullMethodName})
	gw.stage4.stderr.waitForLog(t, "finished call", map[string]any{"grpc.method": "ListAuditEvents", "grpc.code": "PermissionDenied"})
	metrics := scrape(t, gw.metricsAddr)
	require.Contains(t, metrics, `stage4_authz_denied_total{grpc_method="/stage4.v1.Stage4Service/ListAuditEvents"} 1`)
	require.Contains(t, metrics, `grpc_server_handled_total{grpc_code="PermissionDenied",grpc_method="ListAuditEvents"`)
}

// TestServeAuditReadersByClientCertificate runs serve with mTLS and
// STAGE4_AUDIT_READERS (the environment form of --audit-readers): callers
// whose certificate carries a listed URI or DNS SAN may list the audit log,
// others may not, and everyone may execute plans.
func TestServeAuditReadersByClientCertificate(t *testing.T) {
	t.Parallel()
	const auditor = "spiffe://stage4.test/ns/audit/sa/auditor"
	ca := testpki.NewCA(t, "stage4 test CA")
	serverCert, serverKey := ca.Issue(t, "server", x509.ExtKeyUsageServerAuth, "127.0.0.1")
	pair := func(name string, sans ...string) tls.Certificate {
		p, err := tls.LoadX509KeyPair(ca.Issue(t, name, x509.ExtKeyUsageClientAuth, sans...))
		require.NoError(t, err)
		return p
	}

	s3 := start(t, nil, "reference-stage3", "--listen", "127.0.0.1:0")
	s3Addr, _ := s3.servingAddr(t)
	s4 := start(t, []string{"STAGE4_AUDIT_READERS=" + auditor + ",dashboard.stage4.test"},
		"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "",
		"--stage3-addr", s3Addr, "--stage3-insecure",
		"--audit-log", filepath.Join(t.TempDir(), "audit"),
		"--tls-cert-file", serverCert, "--tls-key-file", serverKey, "--tls-client-ca-file", ca.File)
	addr, _ := s4.servingAddr(t)

	tests := []struct {
		name     string
		cert     tls.Certificate
		wantCode codes.Code
	}{
		{name: "listed URI SAN", cert: pair("auditor", auditor), wantCode: codes.OK},
		{name: "listed DNS SAN", cert: pair("dashboard", "dashboard.stage4.test"), wantCode: codes.OK},
		// A certificate whose DNS SAN spells the listed SPIFFE ID is not
		// the workload with that ID: entries with a scheme match URI SANs
		// only.
		{name: "SPIFFE ID spelled in a DNS SAN", cert: pair("lookalike", "dns:"+auditor), wantCode: codes.PermissionDenied},
		{name: "unlisted identity", cert: pair("planner", "spiffe://stage4.test/ns/apps/sa/planner", "planner.stage4.test"), wantCode: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds := credentials.NewTLS(&tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{tt.cert}, MinVersion: tls.VersionTLS12})
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
			require.NoError(t, err)
			defer conn.Close()
			client := stage4v1.NewStage4ServiceClient(conn)
			ctx := testContext(t)
			_, err = client.ExecutePlan(ctx, &stage4v1.ExecutePlanRequest{Plan: testkit.Plan(t)})
			require.NoError(t, err)
			_, err = client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{})
			require.Equal(t, tt.wantCode, status.Code(err), "%v", err)
		})
	}
}

// TestDevAllowsEveryAuditReader: stage4 dev is for trying things out on
// loopback, so its audit log is readable without certificates.
func TestDevAllowsEveryAuditReader(t *testing.T) {
	t.Parallel()
	dev := start(t, nil, "dev", "--listen", "127.0.0.1:0", "--stage3-listen", "127.0.0.1:0",
		"--metrics-listen", "", "--audit-log", filepath.Join(t.TempDir(), "audit"), "--log-format", "json")
	addr, _ := dev.servingAddr(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	_, err = stage4v1.NewStage4ServiceClient(conn).ListAuditEvents(testContext(t), &stage4v1.ListAuditEventsRequest{})
	require.NoError(t, err)
}

// scrape returns the text of the /metrics page at addr.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), http.MethodGet, "http://"+addr+"/metrics", nil)
	require.NoError(t, err)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return string(body)
}
