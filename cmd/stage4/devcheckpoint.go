package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/stage4/stage4/internal/gateway"
)

// printDevCheckpointBanner tells the developer how to fetch a checkpoint
// and check the log and a record against it, with dev's own key.
func printDevCheckpointBanner(w io.Writer, a gateway.Addrs, auditLog, verifierKey string) {
	cp := filepath.Join(filepath.Dir(auditLog), "checkpoint.txt")
	fmt.Fprintf(w, `
Audit checkpoints are signed with dev's own key; its verifier key:
  %s

Keep a checkpoint, then check the whole log and one record against it:
  go tool -modfile=tools/go.mod grpcurl -plaintext -d '{}' %s stage4.v1.Stage4Service/GetCheckpoint | jq -j .checkpoint > %s
  bin/stage4 audit verify --checkpoint %s --verifier-key %s %s
  bin/stage4 audit prove --checkpoint %s --verifier-key %s --sequence 1 %s
  go tool -modfile=tools/go.mod grpcurl -plaintext -d '{"sequence":1}' %s stage4.v1.Stage4Service/GetInclusionProof
`, verifierKey, a.GRPC, cp, cp, verifierKey, auditLog, cp, verifierKey, auditLog, a.GRPC)
}
