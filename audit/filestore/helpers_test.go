package filestore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/filestore"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

func logPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "audit.jsonl")
}

// testLog is an audit.Log on a file store, as the gateway runs it.
type testLog struct {
	*audit.Log
	store *filestore.Store
}

// recovery is what opening a log repaired.
type recovery struct {
	TruncatedBytes int64
	Interrupted    []string
}

func (l *testLog) Recovery() recovery {
	r := recovery{TruncatedBytes: l.store.Recovery().TruncatedBytes, Interrupted: l.Recovered()}
	if len(r.Interrupted) == 0 {
		r.Interrupted = nil
	}
	return r
}

// List lists with the RPC's request and response types.
func (l *testLog) List(ctx context.Context, req *stage4v1.ListAuditEventsRequest) (*stage4v1.ListAuditEventsResponse, error) {
	page, err := l.Log.List(ctx, audit.Query{
		ExecutionID: req.GetExecutionId(), PlanID: req.GetPlanId(), UserID: req.GetUserId(),
		Type: req.GetType(), PageSize: int(req.GetPageSize()), PageToken: req.GetPageToken(),
	})
	if err != nil {
		return nil, err
	}
	return &stage4v1.ListAuditEventsResponse{AuditEvents: page.Events, NextPageToken: page.NextPageToken}, nil
}

// open opens a log on the file at path; opts are filestore.Option or
// audit.Option values.
func open(path string, opts ...any) (*testLog, error) {
	var fopts []filestore.Option
	var lopts []audit.Option
	for _, o := range opts {
		switch o := o.(type) {
		case filestore.Option:
			fopts = append(fopts, o)
		case audit.Option:
			lopts = append(lopts, o)
		default:
			panic(fmt.Sprintf("open: option of type %T", o))
		}
	}
	store, err := filestore.Open(path, fopts...)
	if err != nil {
		return nil, err
	}
	lg, err := audit.New(store, lopts...)
	if err != nil {
		return nil, err
	}
	return &testLog{Log: lg, store: store}, nil
}

func openLog(t *testing.T, path string, opts ...any) *testLog {
	t.Helper()
	lg, err := open(path, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { lg.Close() })
	return lg
}

func event(typ stage4v1.AuditEventType, execID, userID string) *stage4v1.AuditEvent {
	return &stage4v1.AuditEvent{
		Type:        typ,
		ExecutionId: execID,
		PlanId:      "sha256:plan-of-" + userID,
		UserId:      userID,
		Details:     &structpb.Struct{Fields: map[string]*structpb.Value{"phase": structpb.NewStringValue("test")}},
	}
}

func mustAppend(t *testing.T, lg *testLog, evs ...*stage4v1.AuditEvent) {
	t.Helper()
	for _, ev := range evs {
		_, err := lg.Append(context.Background(), ev)
		require.NoError(t, err)
	}
}

// listAll pages through the whole log with the given filters.
func listAll(t *testing.T, lg *testLog, req *stage4v1.ListAuditEventsRequest) []*stage4v1.AuditEvent {
	t.Helper()
	var all []*stage4v1.AuditEvent
	for {
		resp, err := lg.List(context.Background(), req)
		require.NoError(t, err)
		all = append(all, resp.GetAuditEvents()...)
		if resp.GetNextPageToken() == "" {
			return all
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return bytes.SplitAfter(data, []byte("\n"))
}

func requireEvents(t *testing.T, want, got []*stage4v1.AuditEvent) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.True(t, proto.Equal(want[i], got[i]), "event %d:\nwant %v\ngot  %v", i, want[i], got[i])
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
