// Package testkit holds what the tests of several packages share: a plan
// the reference Stage-3 executes, a segment file of a log directory
// (audit/segstore) that fails on demand, the records of a local log read
// behind the server's back, a disk that fills up, and a gRPC server on an
// in-memory connection. It is imported by tests only.
package testkit

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit/segstore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// Plan is a valid three-step plan with a data binding that the
// reference Stage-3 executes for alice.
func Plan(t *testing.T) *stage4v1.Plan {
	t.Helper()
	params := func(m map[string]any) *structpb.Struct {
		s, err := structpb.NewStruct(m)
		require.NoError(t, err)
		return s
	}
	return &stage4v1.Plan{
		UserId:      "alice",
		TokenHash:   "alice-token",
		TriggerType: "manual",
		Steps: []*stage4v1.Step{
			{Domain: "text", Method: "upper", Parameters: params(map[string]any{"text": "hello"})},
			{Domain: "text", Method: "concat", Parameters: params(map[string]any{"right": "!"})},
			{Domain: "text", Method: "length", Parameters: params(map[string]any{})},
		},
		DataBindings: []*stage4v1.DataBinding{
			{SourceStep: 0, SourceOutput: "text", TargetStep: 1, TargetParameter: "left"},
			{SourceStep: 1, SourceOutput: "text", TargetStep: 2, TargetParameter: "text"},
		},
	}
}

// FaultyFile is a segment file (segstore.WithFileWrapper) that fails the
// write that carries its Nth record (counting from 1, 0 = never; a group
// commit writes several records at once) or its Nth Sync, the way a full
// or dying disk would. This is how other packages inject faults.
type FaultyFile struct {
	segstore.File
	FailRecordAt, FailSyncAt int32
	Records, Writes, Syncs   atomic.Int32
}

// ErrInjected is the error FaultyFile injects.
var ErrInjected = errors.New("injected I/O error")

// WriteAt fails for the FailRecordAt-th record.
func (f *FaultyFile) WriteAt(p []byte, off int64) (int, error) {
	f.Writes.Add(1)
	n := int32(bytes.Count(p, []byte{'\n'}))
	last := f.Records.Add(n)
	if f.FailRecordAt > last-n && f.FailRecordAt <= last {
		return 0, ErrInjected
	}
	return f.File.WriteAt(p, off)
}

// Sync fails for the FailSyncAt-th time.
func (f *FaultyFile) Sync() error {
	if f.Syncs.Add(1) == f.FailSyncAt {
		return ErrInjected
	}
	return f.File.Sync()
}

// StartExecutePlan sends an ExecutePlan on conn without waiting for its
// answer and returns the stream, to receive the answer later, and the
// execution id that the header carries before Stage-3 is called.
func StartExecutePlan(ctx context.Context, t *testing.T, conn *grpc.ClientConn, plan *stage4v1.Plan) (grpc.ClientStream, string) {
	t.Helper()
	return StartExecute(ctx, t, conn, &stage4v1.ExecutePlanRequest{Plan: plan})
}

// StartExecute is StartExecutePlan for a whole request (a request_id, say).
func StartExecute(ctx context.Context, t *testing.T, conn *grpc.ClientConn, req *stage4v1.ExecutePlanRequest) (grpc.ClientStream, string) {
	t.Helper()
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, stage4v1.Stage4Service_ExecutePlan_FullMethodName)
	require.NoError(t, err)
	require.NoError(t, stream.SendMsg(req))
	require.NoError(t, stream.CloseSend())
	header, err := stream.Header()
	require.NoError(t, err)
	ids := header.Get(ExecutionIDHeader)
	require.Len(t, ids, 1, "the execution id is sent before Stage-3 answers")
	return stream, ids[0]
}

// ExecutionIDHeader is server.HeaderExecutionID, which testkit cannot
// import (server's own tests use testkit); server's tests check that the
// two agree.
const ExecutionIDHeader = "x-stage4-execution-id"
