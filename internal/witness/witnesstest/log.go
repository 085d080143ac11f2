package witnesstest

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// Log is an in-memory log for witnesses to cosign: an RFC 6962 tree of
// records in golang.org/x/mod/sumdb/tlog's stored-hash layout, as the audit
// log keeps it, and a note key whose name is its origin. It is safe for
// concurrent use.
type Log struct {
	// Origin is the log's origin, its key's name.
	Origin string
	// Signer signs its checkpoints.
	Signer note.Signer
	// Verifier checks them.
	Verifier note.Verifier
	// VerifierKey is the verifier's key, <origin>+<hash>+<key>, as a
	// witness is given it.
	VerifierKey string

	mu     sync.Mutex
	size   int64
	hashes []tlog.Hash
}

// NewLog returns an empty log with a fresh key named origin.
func NewLog(t testing.TB, origin string) *Log {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return &Log{Origin: origin, Signer: signer, Verifier: verifier, VerifierKey: vkey}
}

// Fork returns an empty log with l's key: what it appends is a different
// tree under the same name, a fork when it differs from l's records.
func (l *Log) Fork() *Log {
	return &Log{Origin: l.Origin, Signer: l.Signer, Verifier: l.Verifier, VerifierKey: l.VerifierKey}
}

// Append appends n records, "<prefix> <index>", and returns the tree.
func (l *Log) Append(t testing.TB, prefix string, n int) audit.TreeHead {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	r := tlog.HashReaderFunc(l.readHashes)
	for range n {
		hashes, err := tlog.StoredHashes(l.size, fmt.Appendf(nil, "%s %d", prefix, l.size), r)
		if err != nil {
			t.Fatal(err)
		}
		l.hashes = append(l.hashes, hashes...)
		l.size++
	}
	return l.tree(t)
}

// Tree returns the log's tree.
func (l *Log) Tree(t testing.TB) audit.TreeHead {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tree(t)
}

func (l *Log) tree(t testing.TB) audit.TreeHead {
	t.Helper()
	root, err := tlog.TreeHash(l.size, tlog.HashReaderFunc(l.readHashes))
	if err != nil {
		t.Fatal(err)
	}
	return audit.TreeHead{Size: uint64(l.size), Root: root}
}

// Checkpoint returns the log's checkpoint of its tree, signed by its key.
func (l *Log) Checkpoint(t testing.TB) []byte {
	t.Helper()
	msg, err := audit.SignCheckpoint(l.Signer, l.Tree(t))
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// ReadHashes returns the stored hashes at indexes, as audit.Log.ReadHashes
// does: witness.HashProver(l.ReadHashes) proves the log's consistency.
func (l *Log) ReadHashes(_ context.Context, indexes []int64) ([]tlog.Hash, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.readHashes(indexes)
}

func (l *Log) readHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(l.hashes)) {
			return nil, fmt.Errorf("no stored hash %d in a tree of %d records", x, l.size)
		}
		out[i] = l.hashes[x]
	}
	return out, nil
}
