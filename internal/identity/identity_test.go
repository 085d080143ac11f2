package identity

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

func verified(c *x509.Certificate) *peer.Peer {
	return &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}}}
}

func TestFromPeerAndName(t *testing.T) {
	t.Parallel()
	spiffe, err := url.Parse("spiffe://example.org/ns/prod/sa/planner")
	require.NoError(t, err)
	tests := []struct {
		name   string
		peer   *peer.Peer
		ok     bool
		wantID string
	}{
		{name: "no peer", peer: nil},
		{name: "no TLS", peer: &peer.Peer{}},
		{name: "TLS without a verified client certificate", peer: &peer.Peer{AuthInfo: credentials.TLSInfo{}}},
		{name: "URI SAN wins", peer: verified(&x509.Certificate{URIs: []*url.URL{spiffe}, DNSNames: []string{"planner.example"}, Subject: pkix.Name{CommonName: "planner"}}),
			ok: true, wantID: "spiffe://example.org/ns/prod/sa/planner"},
		{name: "DNS SAN next", peer: verified(&x509.Certificate{DNSNames: []string{"planner.example"}, Subject: pkix.Name{CommonName: "planner"}}),
			ok: true, wantID: "planner.example"},
		{name: "subject otherwise", peer: verified(&x509.Certificate{Subject: pkix.Name{CommonName: "planner", Organization: []string{"Acme"}}}),
			ok: true, wantID: "CN=planner,O=Acme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id, ok := FromPeer(tt.peer)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.wantID, id.Name())
		})
	}
}

// TestMatchesIsSchemeAware: a name with a URL scheme matches URI SANs
// only, any other DNS SANs only, so that a certificate whose DNS SAN
// spells a SPIFFE ID is not taken for that workload.
func TestMatchesIsSchemeAware(t *testing.T) {
	t.Parallel()
	const spiffeID = "spiffe://example.org/ns/audit/sa/auditor"
	u, err := url.Parse(spiffeID)
	require.NoError(t, err)
	byURI, _ := FromPeer(verified(&x509.Certificate{URIs: []*url.URL{u}}))
	byDNSLookalike, _ := FromPeer(verified(&x509.Certificate{DNSNames: []string{spiffeID, "auditor.example"}}))
	tests := []struct {
		name string
		id   Identity
		want string
		ok   bool
	}{
		{"SPIFFE ID in a URI SAN", byURI, spiffeID, true},
		{"SPIFFE ID spelled in a DNS SAN", byDNSLookalike, spiffeID, false},
		{"DNS name in a DNS SAN", byDNSLookalike, "auditor.example", true},
		{"DNS name is not a URI", byURI, "example.org", false},
		{"no identity", Identity{}, spiffeID, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.ok, tt.id.Matches(tt.want))
		})
	}
}

func TestHasScheme(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"spiffe://x": true, "urn:x": true, "a+b.c-d:x": true,
		"auditor.example": false, ":x": false, "1a:x": false, "a b:x": false, "": false,
	} {
		require.Equal(t, want, HasScheme(s), "%q", s)
	}
}
