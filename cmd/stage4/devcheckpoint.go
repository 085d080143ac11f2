package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/stage4/stage4/internal/gateway"
)

// printDevCheckpointBanner tells the developer how to keep a checkpoint
// and check the log and a record against it, with dev's own key. The
// commands fail, and write nothing, when a step fails (audit checkpoint
// checks the signature before it stores anything).
func printDevCheckpointBanner(w io.Writer, a gateway.Addrs, auditLog, verifierKey string) {
	dir := filepath.Join(filepath.Dir(auditLog), "checkpoints")
	fmt.Fprintf(w, `
Audit checkpoints are signed with dev's own key; its verifier key:
  %s

Keep a checkpoint, then check the whole log and one record against it:
  bin/stage4 audit checkpoint --addr %s --plaintext --verifier-key %s --out %s
  cp=$(ls %s/*.txt | tail -n 1)
  bin/stage4 audit verify --checkpoint "$cp" --verifier-key %s %s
  bin/stage4 audit prove --checkpoint "$cp" --verifier-key %s --sequence 1 %s
  go tool -modfile=tools/go.mod grpcurl -plaintext -d '{"sequence":1}' %s stage4.v1.Stage4Service/GetInclusionProof
`, verifierKey, a.GRPC, verifierKey, dir, dir, verifierKey, auditLog, verifierKey, auditLog, a.GRPC)
}
