package audit_test

import (
	"bytes"
	"fmt"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// An auditor checks a checkpoint with the log's verifier key, then a
// record's inclusion proof against its root. The key is made from fixed
// bytes here so that the output is stable; stage4 audit keygen uses
// crypto/rand.
func ExampleOpenCheckpoint() {
	skey, vkey, _ := note.GenerateKey(bytes.NewReader(make([]byte, 32)), "stage4.example.com/audit")
	signer, _ := note.NewSigner(skey)

	// A tree of three records, as a store keeps its stored hashes.
	records := [][]byte{[]byte(`{"sequence":1}`), []byte(`{"sequence":2}`), []byte(`{"sequence":3}`)}
	var stored hashes
	for i, r := range records {
		h, _ := tlog.StoredHashes(int64(i), r, stored)
		stored = append(stored, h...)
	}
	root, _ := tlog.TreeHash(3, stored)
	msg, _ := audit.SignCheckpoint(signer, audit.TreeHead{Size: 3, Root: root})
	fmt.Printf("%s", msg)

	verifier, _ := note.NewVerifier(vkey)
	cp, err := audit.OpenCheckpoint(msg, verifier)
	fmt.Println("signature:", err)
	proof, _ := tlog.ProveRecord(3, 1, stored) // GetInclusionProof{sequence: 2}
	err = tlog.CheckRecord(proof, int64(cp.Size), cp.Root, 1, tlog.RecordHash(records[1]))
	fmt.Println("record 2:", err)
	// Output:
	// stage4.example.com/audit
	// 3
	// Q/0u2LQUAQ3SH+MhTQSmh0M71s5P0aoez96ezrtT1LM=
	//
	// — stage4.example.com/audit St+Qr7qkWpg6B1iUhYO0FhKmosk2+dfl4Zdl+j7rcPVy1yU+woEa+8aTfiWyz9AIGmgHKlWMro4HYqQh6IFTxQg1cgM=
	// signature: <nil>
	// record 2: <nil>
}

type hashes []tlog.Hash

func (h hashes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		out[i] = h[x]
	}
	return out, nil
}
