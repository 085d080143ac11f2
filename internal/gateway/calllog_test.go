package gateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/server"
)

// fakeStream is the server transport stream of a call made without gRPC,
// so that a handler can send headers.
type fakeStream struct{ header metadata.MD }

func (s *fakeStream) Method() string { return stage4v1.Stage4Service_ExecutePlan_FullMethodName }
func (s *fakeStream) SetHeader(md metadata.MD) error {
	s.header = metadata.Join(s.header, md)
	return nil
}
func (s *fakeStream) SendHeader(md metadata.MD) error { return s.SetHeader(md) }
func (s *fakeStream) SetTrailer(metadata.MD) error    { return nil }

// TestFailedCallLineSaysWhy: a failed call's line names its ErrorInfo
// reason, execution id (from the error, or from the header the audit
// interceptor sent), the caller's x-request-id (cut), its verified
// identity, Stage-3's code and the class of a transport failure, and
// never an error message, which may quote a plan; each failed call is
// counted by method, code and reason.
func TestFailedCallLineSaysWhy(t *testing.T) {
	t.Parallel()
	const secret = "secret-parameter-value"
	exec := map[string]string{"execution_id": "0123456789abcdef0123456789abcdef"}
	tests := []struct {
		name       string
		err        error
		sendHeader bool // the handler sends the execution id header, as the audit interceptor does
		want       map[string]any
		absent     []string
	}{
		{
			name: "stage3 not reached over a TLS mismatch",
			err: rpcerr.New(codes.Unavailable, rpcerr.Stage3NotReached, "stage3 not reached, nothing was executed and a retry is safe: "+
				`connection error: desc = "transport: authentication handshake failed: tls: first record does not look like a TLS handshake"`, nil),
			sendHeader: true,
			want: map[string]any{"grpc.code": "Unavailable", "reason": "STAGE3_NOT_REACHED", "cause": "tls_to_plaintext",
				"execution_id": "feedfacefeedfacefeedfacefeedface"},
			absent: []string{"stage3_code"},
		},
		{
			name:       "stage3 rejected the plan",
			err:        rpcerr.New(codes.NotFound, rpcerr.Stage3Rejected, "stage3: no key "+secret, map[string]string{"stage3_code": "NotFound"}),
			sendHeader: true,
			want:       map[string]any{"grpc.code": "NotFound", "reason": "STAGE3_REJECTED", "stage3_code": "NotFound", "execution_id": "feedfacefeedfacefeedfacefeedface"},
			absent:     []string{"cause"},
		},
		{
			name: "the connection broke while Stage-3 had the plan",
			err: rpcerr.New(codes.Unknown, rpcerr.OutcomeUnknown, "outcome unknown, the plan may have run; do not retry blindly: stage3: Unavailable: "+
				"error reading from server: read tcp: connection reset by peer", map[string]string{"stage3_code": "Unavailable"}),
			want: map[string]any{"grpc.code": "Unknown", "reason": "OUTCOME_UNKNOWN", "stage3_code": "Unavailable", "cause": "connection_reset"},
		},
		{
			name: "audit unavailable",
			err:  rpcerr.New(codes.Unavailable, rpcerr.AuditUnavailable, "the audit log is unavailable; the plan was not executed", exec),
			want: map[string]any{"grpc.code": "Unavailable", "reason": "AUDIT_UNAVAILABLE", "execution_id": exec["execution_id"]},
		},
		{
			name:   "no ErrorInfo",
			err:    status.Error(codes.Internal, "internal error "+secret),
			want:   map[string]any{"grpc.code": "Internal"},
			absent: []string{"reason", "execution_id", "cause", "stage3_code"},
		},
	}
	leaf := &x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/ns/apps/sa/caller"}}}
	p := &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 5000},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}},
	}
	longID := "req-" + strings.Repeat("x", 200)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			cl := gateway.NewCallLog(slog.New(slog.NewJSONHandler(&buf, nil)))
			reg := prometheus.NewRegistry()
			require.NoError(t, cl.Register(reg))
			ctx := peer.NewContext(t.Context(), p)
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("x-request-id", longID, "x-request-id", "second"))
			ctx = grpc.NewContextWithServerTransportStream(ctx, &fakeStream{})
			handler := func(ctx context.Context, _ any) (any, error) {
				if tt.sendHeader {
					require.NoError(t, grpc.SendHeader(ctx, metadata.Pairs(server.HeaderExecutionID, "feedfacefeedfacefeedfacefeedface")))
				}
				return nil, tt.err
			}
			info := &grpc.UnaryServerInfo{FullMethod: stage4v1.Stage4Service_ExecutePlan_FullMethodName}
			_, err := cl.UnaryServerInterceptor()(ctx, "request", info, handler)
			require.Equal(t, tt.err, err, "the error goes back unchanged")

			line := map[string]any{}
			require.NoError(t, json.Unmarshal(buf.Bytes(), &line), buf.String())
			for k, v := range tt.want {
				require.Equal(t, v, line[k], "field %s in %v", k, line)
			}
			for _, k := range tt.absent {
				require.NotContains(t, line, k)
			}
			require.Equal(t, longID[:128], line["x_request_id"], "the first x-request-id, cut")
			require.Equal(t, "spiffe://example.org/ns/apps/sa/caller", line["peer.identity"])
			require.Equal(t, "ExecutePlan", line["grpc.method"])
			require.Contains(t, line, "grpc.time_ms")
			require.NotContains(t, buf.String(), secret, "no error message is logged")
			require.NotContains(t, buf.String(), "handshake", "nor the transport's text")

			reason := "ERROR_REASON_UNSPECIFIED"
			if r, ok := tt.want["reason"]; ok {
				reason = r.(string)
			}
			require.Equal(t, 1.0, counterValue(t, reg, "stage4_failed_calls_total", map[string]string{
				"grpc_service": "stage4.v1.Stage4Service", "grpc_method": "ExecutePlan",
				"grpc_code": tt.want["grpc.code"].(string), "reason": reason,
			}))
		})
	}
}

// TestCallLogFlushReportsWhatTheLimitHeldBack: failures that the rate
// limit left out are counted in a line when Flush is called, rather than
// lost when the process exits before the next line.
func TestCallLogFlushReportsWhatTheLimitHeldBack(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	cl := gateway.NewCallLog(slog.New(slog.NewJSONHandler(&buf, nil)))
	info := &grpc.UnaryServerInfo{FullMethod: stage4v1.Stage4Service_ExecutePlan_FullMethodName}
	failing := func(context.Context, any) (any, error) {
		return nil, rpcerr.New(codes.Unknown, rpcerr.OutcomeUnknown, "Stage-4 shut down while the plan was with Stage-3", nil)
	}
	for range 4 {
		_, err := cl.UnaryServerInterceptor()(t.Context(), "request", info, failing)
		require.Error(t, err)
	}
	cl.Flush()
	var lines []map[string]any
	for l := range bytes.SplitSeq(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		m := map[string]any{}
		require.NoError(t, json.Unmarshal(l, &m))
		lines = append(lines, m)
	}
	// The first failure's line, then Flush's: the count of the three left
	// out, with the last one's fields.
	require.Len(t, lines, 2, "%v", lines)
	for _, l := range lines {
		require.Equal(t, "OUTCOME_UNKNOWN", l["reason"])
		require.Equal(t, "ERROR", l["level"])
	}
	require.NotContains(t, lines[0], "suppressed")
	require.Equal(t, 3.0, lines[1]["suppressed"])
}

// counterValue is the value of the counter name with exactly labels in
// reg; the test fails when there is none.
func counterValue(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	require.Fail(t, "no such counter", "%s %v", name, labels)
	return 0
}

// BenchmarkCallLogSuccess is the call log's cost on a successful call at
// info level, the path every call takes: for ExecutePlan, the wrapper that
// notes the execution id header; for other methods, nothing.
func BenchmarkCallLogSuccess(b *testing.B) {
	cl := gateway.NewCallLog(slog.New(slog.DiscardHandler))
	interceptor := cl.UnaryServerInterceptor()
	ok := func(context.Context, any) (any, error) { return "response", nil }
	ctx := grpc.NewContextWithServerTransportStream(context.Background(), &fakeStream{})
	for _, method := range []string{stage4v1.Stage4Service_ExecutePlan_FullMethodName, stage4v1.Stage4Service_ValidatePlan_FullMethodName} {
		info := &grpc.UnaryServerInfo{FullMethod: method}
		b.Run(method[strings.LastIndexByte(method, '/')+1:], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = interceptor(ctx, "request", info, ok)
			}
		})
	}
}
