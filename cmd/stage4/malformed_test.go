package main

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
)

// rawCodec sends a []byte request as it is, so that a test can put any
// bytes on the wire, and decodes responses as gRPC's proto codec does.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return encoding.GetCodecV2(protoenc.Name).Unmarshal(data, v)
}

func (rawCodec) Name() string { return protoenc.Name }

// TestServeRefusesMalformedRequests sends bytes that do not decode as an
// ExecutePlanRequest to the real binary: the caller gets INVALID_ARGUMENT
// with REQUEST_MALFORMED, not INTERNAL, and the refusal is in the call log,
// the gRPC metrics and the malformed-request counter like any other.
func TestServeRefusesMalformedRequests(t *testing.T) {
	t.Parallel()
	gw := startGateway(t, nil, nil)
	// An ExecutePlanRequest whose plan's user_id is not UTF-8.
	plan := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "al\xffice")
	badUTF8 := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), plan)

	tests := []struct {
		name string
		body []byte
	}{
		{name: "garbage", body: []byte{0xff, 0xff, 0xff, 0xff}},
		{name: "invalid UTF-8", body: badUTF8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp stage4v1.ExecutePlanResponse
			err := gw.conn.Invoke(testContext(t), stage4v1.Stage4Service_ExecutePlan_FullMethodName, tt.body, &resp,
				grpc.ForceCodecV2(rawCodec{}))
			require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
			require.Equal(t, rpcerr.RequestMalformed, rpcerr.Reason(err))
		})
	}

	gw.stage4.stderr.waitForLog(t, "finished call", map[string]any{"grpc.method": "ExecutePlan", "grpc.code": "InvalidArgument"})
	gw.stage4.stderr.waitForLog(t, "malformed request refused", map[string]any{"grpc.method": stage4v1.Stage4Service_ExecutePlan_FullMethodName})
	metrics := scrape(t, gw.metricsAddr)
	require.Contains(t, metrics, `grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="ExecutePlan",grpc_service="stage4.v1.Stage4Service",grpc_type="unary"} 2`)
	require.Contains(t, metrics, `stage4_malformed_requests_total{grpc_method="/stage4.v1.Stage4Service/ExecutePlan"} 2`)
	require.Empty(t, executions(t, gw.auditLog), "nothing was decoded, so there is nothing to audit")
}
