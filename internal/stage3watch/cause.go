package stage3watch

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stage4/stage4/stage3client"
)

// Cause is why Stage-3 could not be reached, as a short class from a fixed
// set: fit for a metric label and a log line, since it never carries the
// text it was derived from (which names hosts and may, for errors from
// Stage-3 itself, quote a plan).
type Cause string

// The causes Classify tells apart.
const (
	// CauseNone: no error.
	CauseNone Cause = ""
	// CauseTLSToPlaintext: Stage-4 spoke TLS to a Stage-3 that answers in
	// plaintext.
	CauseTLSToPlaintext Cause = "tls_to_plaintext"
	// CauseClosedBeforePreface: Stage-3 closed the connection before it
	// spoke HTTP/2, what a TLS server does to a plaintext client.
	CauseClosedBeforePreface Cause = "closed_before_http2"
	// CauseTLSUnknownAuthority: Stage-3's certificate chains to no CA that
	// Stage-4 trusts.
	CauseTLSUnknownAuthority Cause = "tls_unknown_authority"
	// CauseTLSNameMismatch: Stage-3's certificate is not for the name (or
	// address) Stage-4 dialed.
	CauseTLSNameMismatch Cause = "tls_name_mismatch"
	// CauseTLSExpired: Stage-3's certificate has expired or is not valid
	// yet.
	CauseTLSExpired Cause = "tls_expired"
	// CauseTLSClientCertificate: Stage-3 wants a client certificate it
	// trusts, and Stage-4 sent none or another.
	CauseTLSClientCertificate Cause = "tls_client_certificate"
	// CauseTLS: another TLS failure.
	CauseTLS Cause = "tls"
	// CauseNameResolution: the host name does not resolve.
	CauseNameResolution Cause = "name_resolution"
	// CauseConnectionRefused: nothing listens at the address.
	CauseConnectionRefused Cause = "connection_refused"
	// CauseNetworkUnreachable: no route to the address.
	CauseNetworkUnreachable Cause = "network_unreachable"
	// CauseConnectionReset: an established connection broke.
	CauseConnectionReset Cause = "connection_reset"
	// CauseTimeout: no answer in time.
	CauseTimeout Cause = "timeout"
	// CauseNotServing: Stage-3 answered that it does not serve.
	CauseNotServing Cause = "not_serving"
	// CauseOther: none of the above.
	CauseOther Cause = "other"
)

// classes map what gRPC and Go's TLS, x509 and net packages write into an
// error's text to a Cause, most specific first. They match the transport's
// words only, never a message of Stage-3's.
var classes = []struct {
	cause Cause
	texts []string
}{
	{CauseTLSToPlaintext, []string{"first record does not look like a TLS handshake"}},
	{CauseTLSClientCertificate, []string{"remote error: tls: certificate required", "remote error: tls: bad certificate",
		"remote error: tls: unknown certificate authority", "remote error: tls: unknown certificate", "remote error: tls: expired certificate"}},
	{CauseTLSUnknownAuthority, []string{"certificate signed by unknown authority"}},
	{CauseTLSNameMismatch, []string{"x509: certificate is valid for", "doesn't contain any IP SANs", "certificate is not valid for any names"}},
	{CauseTLSExpired, []string{"x509: certificate has expired or is not yet valid"}},
	{CauseTLS, []string{"tls: ", "x509: ", "authentication handshake failed"}},
	{CauseNameResolution, []string{"name resolver error", "no such host", "produced zero addresses", "server misbehaving"}},
	{CauseConnectionRefused, []string{"connection refused"}},
	{CauseNetworkUnreachable, []string{"no route to host", "network is unreachable"}},
	{CauseClosedBeforePreface, []string{"error reading server preface"}},
	{CauseConnectionReset, []string{"connection reset", "broken pipe", "EOF", "connection closed", "transport is closing"}},
	{CauseTimeout, []string{"i/o timeout", "deadline exceeded"}},
}

// Classify returns the cause of err, an error of a Stage-3 call or Check:
// gRPC's status (its message describes the transport's failure) or a
// Stage-4 status error that wraps such a message (STAGE3_NOT_REACHED).
func Classify(err error) Cause {
	switch {
	case err == nil:
		return CauseNone
	case errors.Is(err, stage3client.ErrNotServing):
		return CauseNotServing
	}
	msg := status.Convert(err).Message()
	for _, c := range classes {
		for _, t := range c.texts {
			if strings.Contains(msg, t) {
				return c.cause
			}
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		return CauseTimeout
	}
	return CauseOther
}

// Hint is what the operator can do about cause, in the flags of stage4
// serve, for a Stage-3 configured as cfg.
func Hint(cause Cause, cfg stage3client.Config) string {
	switch cause {
	case CauseTLSToPlaintext:
		return "Stage-3 answers in plaintext, and Stage-4 speaks TLS to it: serve Stage-3 with TLS, " +
			"or pass --stage3-insecure where the hop is protected otherwise (a trusted network, a sidecar that does TLS)"
	case CauseClosedBeforePreface:
		if cfg.Insecure {
			return "Stage-3 closed the connection before speaking HTTP/2, what a TLS server does to a plaintext client: " +
				"drop --stage3-insecure (and give --stage3-ca-file if its CA is not a system root)"
		}
		return "Stage-3 closed the connection before speaking HTTP/2: is --stage3-addr a gRPC server?" + mTLSHint(cfg)
	case CauseTLSUnknownAuthority:
		return "Stage-3's certificate is signed by a CA that Stage-4 does not trust: " +
			"give that CA's certificate as --stage3-ca-file"
	case CauseTLSNameMismatch:
		return "Stage-3's certificate is not for the host of --stage3-addr: " +
			"set --stage3-server-name to a name the certificate holds, or use that name in --stage3-addr"
	case CauseTLSExpired:
		return "Stage-3's certificate has expired or is not valid yet (or this machine's clock is wrong)"
	case CauseTLSClientCertificate:
		return "Stage-3 refused Stage-4's client certificate, or wants one: " +
			"give one it trusts as --stage3-cert-file and --stage3-key-file"
	case CauseTLS:
		return "the TLS handshake with Stage-3 failed: check --stage3-ca-file, --stage3-server-name, " +
			"--stage3-cert-file and --stage3-key-file against Stage-3's TLS settings"
	case CauseNameResolution:
		return "the host name in --stage3-addr " + quote(cfg.Target) + " does not resolve: a typo, or a name this machine's DNS does not know"
	case CauseConnectionRefused:
		return "nothing accepts connections at --stage3-addr " + quote(cfg.Target) + ": a wrong port, or Stage-3 is not running"
	case CauseNetworkUnreachable:
		return "no route to --stage3-addr " + quote(cfg.Target) + ": a firewall, a network policy or a wrong address"
	case CauseConnectionReset:
		return "the connection to Stage-3 broke: Stage-3 restarting, or something between them closing connections" + mTLSHint(cfg)
	case CauseTimeout:
		return "Stage-3 did not answer in time: it is overloaded, or packets to --stage3-addr are dropped (a firewall)"
	case CauseNotServing:
		return "Stage-3 answers that it does not serve (its grpc.health.v1 status)"
	}
	return "see the error; check --stage3-addr and the --stage3-* TLS flags"
}

// mTLSHint is the likely reason for a connection that Stage-3 closes
// right after a TLS handshake: with TLS 1.3 a server refuses a client
// certificate (or its absence) only after the client has finished its
// handshake, so the client sees a broken connection, not the alert.
func mTLSHint(cfg stage3client.Config) string {
	if cfg.Insecure || cfg.CertFile != "" {
		return ""
	}
	return "; if Stage-3 requires client certificates (mTLS), give one it trusts as --stage3-cert-file and --stage3-key-file"
}

func quote(s string) string { return "\"" + s + "\"" }
