package catalog_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/stage3client/catalog"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// describe parses a DescribeMethods answer from its JSON form.
func describe(t *testing.T, js string) *stage3v1.DescribeMethodsResponse {
	t.Helper()
	resp := &stage3v1.DescribeMethodsResponse{}
	require.NoError(t, protojson.Unmarshal([]byte(js), resp))
	return resp
}

// oneMethod is an answer with the method d.m whose parameters schema is
// schema (JSON; "" for none).
func oneMethod(t *testing.T, schema string) *stage3v1.DescribeMethodsResponse {
	t.Helper()
	m := `{"name":"m"}`
	if schema != "" {
		m = `{"name":"m","parametersSchema":` + schema + `}`
	}
	return describe(t, `{"domains":[{"name":"d","methods":[`+m+`]}]}`)
}

// nested is a schema nested n objects deep.
func nested(n int) string {
	return strings.Repeat(`{"not":`, n-1) + `{}` + strings.Repeat(`}`, n-1)
}

// anyOfChain is a schema of n definitions, each an anyOf of two
// references to the next: small, but 2^n subschemas once expanded.
func anyOfChain(n int) string {
	var defs []string
	for i := range n {
		defs = append(defs, fmt.Sprintf(`"d%d":{"anyOf":[{"$ref":"#/$defs/d%d"},{"$ref":"#/$defs/d%d"}]}`, i, i+1, i+1))
	}
	defs = append(defs, fmt.Sprintf(`"d%d":{"type":"string"}`, n))
	return `{"$defs":{` + strings.Join(defs, ",") + `},"$ref":"#/$defs/d0"}`
}

func TestCompileTheReferenceCatalogue(t *testing.T) {
	t.Parallel()
	resp := stage3ref.Catalogue()
	cat, err := catalog.Compile(resp)
	require.NoError(t, err)
	require.Equal(t, 10, cat.Methods())
	require.True(t, proto.Equal(resp, cat.Description()))
	require.True(t, cat.HasDomain("text"))
	require.False(t, cat.HasDomain("mail"))
	require.Equal(t, []string{"json", "math", "text"}, cat.DomainNames())
	require.Equal(t, []string{"concat", "length", "lower", "upper"}, cat.MethodNames("text"))
	require.Equal(t, "text.upper", cat.Lookup("text", "upper").FullName())
	require.Nil(t, cat.Lookup("text", "uppercase"))
	require.Nil(t, cat.Lookup("mail", "send"))
}

func TestCompileRefuses(t *testing.T) {
	t.Parallel()
	manyMethods := &stage3v1.DescribeMethodsResponse{}
	for d := range 11 {
		dom := &stage3v1.DomainDescription{Name: fmt.Sprintf("d%d", d)}
		for m := range 100 {
			dom.Methods = append(dom.Methods, &stage3v1.MethodDescription{Name: fmt.Sprintf("m%d", m)})
		}
		manyMethods.Domains = append(manyMethods.Domains, dom)
	}
	bigSchema := &structpb.Struct{Fields: map[string]*structpb.Value{
		"description": structpb.NewStringValue(strings.Repeat("x", catalog.MaxSchemaBytes)),
	}}
	tests := []struct {
		name    string
		resp    func(t *testing.T) *stage3v1.DescribeMethodsResponse
		wantErr string
	}{
		{name: "over 1 MiB", wantErr: "over 1048576",
			resp: func(*testing.T) *stage3v1.DescribeMethodsResponse {
				return &stage3v1.DescribeMethodsResponse{Domains: []*stage3v1.DomainDescription{{Name: "d", Description: strings.Repeat("x", catalog.MaxBytes)}}}
			}},
		{name: "more than 1024 methods", wantErr: "more than 1024 methods",
			resp: func(*testing.T) *stage3v1.DescribeMethodsResponse { return manyMethods }},
		{name: "a domain name no step can name", wantErr: `domain name "Text" is not a lowercase identifier`,
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return describe(t, `{"domains":[{"name":"Text"}]}`)
			}},
		{name: "a method name no step can name", wantErr: `method name "to-upper" of domain "text"`,
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return describe(t, `{"domains":[{"name":"text","methods":[{"name":"to-upper"}]}]}`)
			}},
		{name: "a domain twice", wantErr: `domain "text" is listed twice`,
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return describe(t, `{"domains":[{"name":"text"},{"name":"text"}]}`)
			}},
		{name: "a method twice", wantErr: "method text.upper is listed twice",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return describe(t, `{"domains":[{"name":"text","methods":[{"name":"upper"},{"name":"upper"}]}]}`)
			}},
		{name: "a schema over 64 KiB", wantErr: "parameters schema of d.m: 65561 bytes, over 65536",
			resp: func(*testing.T) *stage3v1.DescribeMethodsResponse {
				return &stage3v1.DescribeMethodsResponse{Domains: []*stage3v1.DomainDescription{{Name: "d",
					Methods: []*stage3v1.MethodDescription{{Name: "m", ParametersSchema: bigSchema}}}}}
			}},
		{name: "an output schema over 64 KiB", wantErr: "output schema of d.m: 65561 bytes, over 65536",
			resp: func(*testing.T) *stage3v1.DescribeMethodsResponse {
				return &stage3v1.DescribeMethodsResponse{Domains: []*stage3v1.DomainDescription{{Name: "d",
					Methods: []*stage3v1.MethodDescription{{Name: "m", OutputSchema: bigSchema}}}}}
			}},
		{name: "a schema nested too deep", wantErr: "nested deeper than 32",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse { return oneMethod(t, nested(33)) }},
		{name: "not a schema", wantErr: "parameters schema of d.m",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse { return oneMethod(t, `{"type":5}`) }},
		{name: "a reference to a local file", wantErr: "file:///etc/passwd is not a schema of the catalog",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return oneMethod(t, `{"$ref":"file:///etc/passwd"}`)
			}},
		{name: "a reference to the network", wantErr: "https://example.com/s.json is not a schema of the catalog",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return oneMethod(t, `{"$ref":"https://example.com/s.json"}`)
			}},
		{name: "a metaschema of its own", wantErr: "is not a schema of the catalog",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return oneMethod(t, `{"$schema":"https://example.com/meta.json"}`)
			}},
		{name: "a dynamic reference", wantErr: "$dynamicRef and $recursiveRef are not supported",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return oneMethod(t, `{"$dynamicAnchor":"a","properties":{"x":{"$dynamicRef":"#a"}}}`)
			}},
		{name: "an exponential expansion", wantErr: "more than 2048 subschemas once references are expanded",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse { return oneMethod(t, anyOfChain(16)) }},
		{name: "an exponential recursion", wantErr: "more than 2048 subschemas",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return oneMethod(t, `{"anyOf":[{"properties":{"x":{"$ref":"#"}}},{"properties":{"y":{"$ref":"#"}}}]}`)
			}},
		{name: "a pattern Go cannot compile", wantErr: "parameters schema of d.m",
			resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
				return oneMethod(t, `{"properties":{"x":{"pattern":"(?=a)"}}}`)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cat, err := catalog.Compile(tt.resp(t))
			require.ErrorIs(t, err, catalog.ErrInvalid)
			require.ErrorContains(t, err, tt.wantErr)
			require.Nil(t, cat)
		})
	}
}

func TestCompileAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		resp func(t *testing.T) *stage3v1.DescribeMethodsResponse
	}{
		{name: "an empty catalogue", resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse { return describe(t, `{}`) }},
		{name: "a method without a schema", resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse { return oneMethod(t, "") }},
		{name: "a schema 32 levels deep", resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse { return oneMethod(t, nested(32)) }},
		{name: "a small anyOf chain", resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse { return oneMethod(t, anyOfChain(8)) }},
		{name: "a recursive schema of trees", resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
			return oneMethod(t, `{"$defs":{"node":{"type":"object","properties":{"children":{"type":"array","items":{"$ref":"#/$defs/node"}}}}},
				"type":"object","properties":{"tree":{"$ref":"#/$defs/node"}}}`)
		}},
		{name: "a reference to another method's schema", resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
			return describe(t, `{"domains":[{"name":"d","methods":[
				{"name":"a","parametersSchema":{"type":"object","properties":{"x":{"type":"string"}}}},
				{"name":"b","parametersSchema":{"$ref":"a.json"}}]}]}`)
		}},
		{name: "a draft-07 schema", resp: func(t *testing.T) *stage3v1.DescribeMethodsResponse {
			return oneMethod(t, `{"$schema":"http://json-schema.org/draft-07/schema#","type":"object"}`)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := catalog.Compile(tt.resp(t))
			require.NoError(t, err)
		})
	}
}
