package main

import (
	"bytes"
	"encoding/pem"
	"errors"

	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// caBundle returns the root certificates for the image's CA file, in PEM:
// Mozilla's NSS trust store as golang.org/x/crypto/x509roots/fallback
// packs it. That module, pinned in go.sum, rather than the build
// machine's /etc/ssl/certs: the image is then the same on every machine,
// and an update is a reviewed go.mod change. Roots that NSS trusts only
// with constraints (a distrust date) are left out, since a PEM file cannot
// carry the constraint and would trust them without it; certificates that
// chain to them are refused, not accepted.
func caBundle() (pemBytes []byte, n int, err error) {
	var buf bytes.Buffer
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate}); err != nil {
			return nil, 0, err
		}
		n++
	}
	if n == 0 {
		return nil, 0, errors.New("x509roots/fallback/bundle holds no unconstrained roots")
	}
	return buf.Bytes(), n, nil
}
