package filestore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

func ExampleVerify() {
	dir, err := os.MkdirTemp("", "audit")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "audit.jsonl")

	store, err := filestore.Open(path)
	if err != nil {
		panic(err)
	}
	lg, err := audit.New(store)
	if err != nil {
		panic(err)
	}
	for _, t := range []stage4v1.AuditEventType{
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_PLAN_RECEIVED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_STARTED,
		stage4v1.AuditEventType_AUDIT_EVENT_TYPE_EXECUTION_COMPLETED,
	} {
		if _, err := lg.Append(context.Background(), &stage4v1.AuditEvent{Type: t, ExecutionId: "e1"}); err != nil {
			panic(err)
		}
	}
	if err := lg.Close(); err != nil {
		panic(err)
	}

	res, err := filestore.Verify(path)
	fmt.Println(res.Records, err)
	// Output: 3 <nil>
}
