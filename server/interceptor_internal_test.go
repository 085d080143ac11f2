package server

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/credentials"
)

func TestPeerIdentity(t *testing.T) {
	t.Parallel()
	spiffe, err := url.Parse("spiffe://example.org/ns/prod/sa/planner")
	require.NoError(t, err)
	chain := func(c *x509.Certificate) credentials.TLSInfo {
		return credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}}
	}
	tests := []struct {
		name string
		info credentials.AuthInfo
		want string
	}{
		{name: "no TLS", info: nil, want: ""},
		{name: "TLS without client certificate", info: credentials.TLSInfo{}, want: ""},
		{name: "URI SAN wins", info: chain(&x509.Certificate{URIs: []*url.URL{spiffe}, Subject: pkix.Name{CommonName: "planner"}}),
			want: "spiffe://example.org/ns/prod/sa/planner"},
		{name: "subject otherwise", info: chain(&x509.Certificate{Subject: pkix.Name{CommonName: "planner", Organization: []string{"Acme"}}}),
			want: "CN=planner,O=Acme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, peerIdentity(tt.info))
		})
	}
}

func TestBound(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		in            string
		chars         int
		want          string
		wantTruncated bool
	}{
		{name: "short", in: "abc", chars: 3, want: "abc"},
		{name: "cut by characters, not bytes", in: "ééééé", chars: 3, want: "ééé", wantTruncated: true},
		{name: "invalid UTF-8 replaced", in: "a\xffb", chars: 10, want: "a\uFFFDb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b bounder
			require.Equal(t, tt.want, b.bound(tt.in, tt.chars))
			require.Equal(t, tt.wantTruncated, b.truncated)
		})
	}
}
