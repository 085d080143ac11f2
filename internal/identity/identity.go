// Package identity names the caller of an RPC by its verified client
// certificate: the one notion of "who is calling" that authorization
// (--audit-readers), the audit events (peer_identity) and idempotency keys
// share, so that they never disagree about a caller.
package identity

import (
	"context"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Identity is what a caller proves with the leaf of its verified client
// certificate chain. A caller without one (plaintext, TLS without a client
// certificate, or a certificate the server did not verify) has none.
type Identity struct {
	// URIs are the certificate's URI SANs (SPIFFE IDs, say), in order.
	URIs []string
	// DNSNames are its DNS SANs, in order.
	DNSNames []string
	// Subject is its subject's distinguished name.
	Subject string
}

// FromPeer returns the identity of p's verified client certificate; ok is
// false when it has none.
func FromPeer(p *peer.Peer) (id Identity, ok bool) {
	if p == nil {
		return Identity{}, false
	}
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !isTLS || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	leaf := info.State.VerifiedChains[0][0]
	id.URIs = make([]string, len(leaf.URIs))
	for i, u := range leaf.URIs {
		id.URIs[i] = u.String()
	}
	id.DNSNames = append([]string(nil), leaf.DNSNames...)
	id.Subject = leaf.Subject.String()
	return id, true
}

// FromContext returns the identity of the caller of the RPC whose context
// ctx is.
func FromContext(ctx context.Context) (Identity, bool) {
	p, _ := peer.FromContext(ctx)
	return FromPeer(p)
}

// Name is the caller's one name, for the audit log and idempotency keys:
// the first URI SAN (a SPIFFE ID names a workload), else the first DNS
// SAN, else the subject.
func (id Identity) Name() string {
	switch {
	case len(id.URIs) > 0:
		return id.URIs[0]
	case len(id.DNSNames) > 0:
		return id.DNSNames[0]
	}
	return id.Subject
}

// Matches reports whether the identity carries name: a name with a URL
// scheme ("spiffe://...") is compared with the URI SANs only, any other
// with the DNS SANs only, so that a DNS SAN that happens to spell a SPIFFE
// ID proves nothing.
func (id Identity) Matches(name string) bool {
	list := id.DNSNames
	if HasScheme(name) {
		list = id.URIs
	}
	for _, n := range list {
		if n == name {
			return true
		}
	}
	return false
}

// HasScheme reports whether name starts with a URL scheme and a colon
// (RFC 3986: a letter, then letters, digits, "+", "-" or ".").
func HasScheme(name string) bool {
	i := strings.IndexByte(name, ':')
	if i < 1 {
		return false
	}
	for j, c := range name[:i] {
		alpha := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !alpha && (j == 0 || (c < '0' || c > '9') && c != '+' && c != '-' && c != '.') {
			return false
		}
	}
	return true
}
