package catalog_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/stage3client/catalog"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// TestReferenceCatalogueAgreesWithItsExecutor holds the reference
// Stage-3's catalogue against what it executes: the parameters it runs
// pass Check, and those it refuses for their names or types fail it.
// Two refusals are beyond a schema (a value-dependent failure), and one
// difference is by design: the executor ignores parameters that its
// catalogue forbids.
func TestReferenceCatalogueAgreesWithItsExecutor(t *testing.T) {
	t.Parallel()
	lis := bufconn.Listen(1 << 20)
	srv := stage3ref.Serve(lis, stage3ref.NewService())
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	client := stage3v1.NewStage3ServiceClient(conn)
	resp, err := client.DescribeMethods(t.Context(), &stage3v1.DescribeMethodsRequest{})
	require.NoError(t, err)
	cat, err := catalog.Compile(resp)
	require.NoError(t, err)

	tests := []struct {
		name           string
		domain, method string
		params         string
		runs, checks   bool
	}{
		{name: "text.upper", domain: "text", method: "upper", params: `{"text":"héllo"}`, runs: true, checks: true},
		{name: "text.lower", domain: "text", method: "lower", params: `{"text":"HeLLo"}`, runs: true, checks: true},
		{name: "text.length", domain: "text", method: "length", params: `{"text":"héllo"}`, runs: true, checks: true},
		{name: "text.concat", domain: "text", method: "concat", params: `{"left":"a","right":"b"}`, runs: true, checks: true},
		{name: "math.add", domain: "math", method: "add", params: `{"a":2,"b":3.5}`, runs: true, checks: true},
		{name: "math.multiply", domain: "math", method: "multiply", params: `{"a":4,"b":-2}`, runs: true, checks: true},
		{name: "math.sum", domain: "math", method: "sum", params: `{"values":[1,2,3.5]}`, runs: true, checks: true},
		{name: "json.get", domain: "json", method: "get", params: `{"object":{"a":[1,"x"]},"key":"a"}`, runs: true, checks: true},
		{name: "json.keys", domain: "json", method: "keys", params: `{"object":{"b":1}}`, runs: true, checks: true},
		{name: "json.merge", domain: "json", method: "merge", params: `{"base":{"a":1},"patch":{"b":2}}`, runs: true, checks: true},
		{name: "a missing parameter", domain: "text", method: "upper", params: `{}`},
		{name: "a wrong type", domain: "math", method: "add", params: `{"a":1,"b":"2"}`},
		{name: "a list item of a wrong type", domain: "math", method: "sum", params: `{"values":[1,true]}`},
		{name: "an object that is a list", domain: "json", method: "keys", params: `{"object":[]}`},
		{name: "beyond a schema: overflow", domain: "math", method: "multiply", params: `{"a":1e300,"b":1e300}`, checks: true},
		{name: "beyond a schema: a missing key", domain: "json", method: "get", params: `{"object":{},"key":"z"}`, checks: true},
		{name: "by design: an extra parameter", domain: "text", method: "upper", params: `{"text":"a","txt":"b"}`, runs: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := params(t, tt.params)
			_, err := client.ExecuteMultiDomainPlan(t.Context(), &stage3v1.ExecuteMultiDomainPlanRequest{
				UserId: "alice", TokenHash: "alice-token", TriggerType: "manual",
				Steps: []*stage3v1.Step{{Domain: tt.domain, Method: tt.method, Parameters: p}},
			})
			if tt.runs {
				require.NoError(t, err)
			} else {
				require.Equal(t, codes.InvalidArgument, status.Code(err), "error: %v", err)
			}
			problems := cat.Lookup(tt.domain, tt.method).Check(p, nil)
			require.Equal(t, tt.checks, len(problems) == 0, "problems: %v", problems)
		})
	}
}
