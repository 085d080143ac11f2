package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"hash"
	"sync"
)

// pageTokens makes and checks the page tokens of every store alike: a
// token is the cursor where the listing continues, a digest of the filter
// it was issued for and a MAC under a key derived from the store's secret
// key. A token made up, altered, issued for other filters or by another
// log is refused (ErrInvalidPageToken) rather than read as a position;
// every replica of a shared store, and the same log after a restart,
// accept it.
type pageTokens struct {
	macs sync.Pool // hash.Hash: HMAC-SHA256 under the token key
}

const (
	tokenVersion = 3
	tokenMACLen  = 12
	// filterDigestLen is the length of the filter's digest in a token.
	filterDigestLen = 16
	// tokenLen is version, sequence, offset, filter digest and MAC.
	tokenLen = 1 + 8 + 8 + filterDigestLen + tokenMACLen
)

// newPageTokens derives the token key from the store's secret key, so
// that a token's MAC says nothing about the key used for fingerprints.
func newPageTokens(storeKey []byte) *pageTokens {
	m := hmac.New(sha256.New, storeKey)
	m.Write([]byte("stage4 page token key"))
	key := m.Sum(nil)
	t := &pageTokens{}
	t.macs.New = func() any { return hmac.New(sha256.New, key) }
	return t
}

// encode makes the token that continues a listing with filter f at c.
func (t *pageTokens) encode(f *Filter, c Cursor) string {
	b := make([]byte, 0, tokenLen)
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint64(b, c.Sequence)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Offset))
	d := filterDigest(f)
	b = append(b, d[:]...)
	b = append(b, t.mac(b)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decode returns the cursor of tok, a token issued by encode for f.
func (t *pageTokens) decode(f *Filter, tok string) (Cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != tokenLen || b[0] != tokenVersion {
		return Cursor{}, ErrInvalidPageToken
	}
	body, mac := b[:tokenLen-tokenMACLen], b[tokenLen-tokenMACLen:]
	d := filterDigest(f)
	if !hmac.Equal(mac, t.mac(body)) || !bytes.Equal(body[17:], d[:]) {
		return Cursor{}, ErrInvalidPageToken
	}
	c := Cursor{Sequence: binary.BigEndian.Uint64(body[1:9]), Offset: int64(binary.BigEndian.Uint64(body[9:17]))}
	if c.Sequence == 0 || c.Offset < 0 {
		return Cursor{}, ErrInvalidPageToken
	}
	return c, nil
}

func (t *pageTokens) mac(body []byte) []byte {
	m := t.macs.Get().(hash.Hash)
	defer t.macs.Put(m)
	m.Reset()
	m.Write(body)
	return m.Sum(nil)[:tokenMACLen]
}

// filterDigest is a digest of f, so that a token is honoured only for the
// filters it was issued for.
func filterDigest(f *Filter) [filterDigestLen]byte {
	var in []byte
	for _, s := range []string{f.ExecutionID, f.PlanID, f.UserID} {
		in = binary.AppendUvarint(in, uint64(len(s)))
		in = append(in, s...)
	}
	in = binary.AppendUvarint(in, uint64(f.Type))
	sum := sha256.Sum256(in)
	var d [filterDigestLen]byte
	copy(d[:], sum[:])
	return d
}
