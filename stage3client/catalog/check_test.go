package catalog_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/stage3client/catalog"
)

// testCatalogue has methods whose schemas exercise Check.
const testCatalogue = `{"domains":[{"name":"t","methods":[
  {"name":"concat","parametersSchema":{"type":"object","properties":{"left":{"type":"string"},"right":{"type":"string"}},
    "required":["left","right"],"additionalProperties":false}},
  {"name":"nested","parametersSchema":{"type":"object","required":["opts"],"properties":{"opts":{"type":"object",
    "properties":{"mode":{"enum":["a","b"]},"n":{"type":"integer"}},"required":["mode"],"additionalProperties":false}}}},
  {"name":"open"},
  {"name":"either","parametersSchema":{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"number"}},
    "oneOf":[{"required":["a"]},{"required":["b"]}]}},
  {"name":"strict","parametersSchema":{"type":"object","properties":{"a":{"type":"string"}},"unevaluatedProperties":false}},
  {"name":"strings","parametersSchema":{"type":"object","additionalProperties":{"type":"string"}}}
]}]}`

func params(t *testing.T, js string) *structpb.Struct {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(js), &m))
	s, err := structpb.NewStruct(m)
	require.NoError(t, err)
	return s
}

func TestCheck(t *testing.T) {
	t.Parallel()
	cat, err := catalog.Compile(describe(t, testCatalogue))
	require.NoError(t, err)
	tests := []struct {
		name   string
		method string
		params string
		bound  []string
		want   []catalog.Problem
	}{
		{name: "valid", method: "concat", params: `{"left":"a","right":"b"}`},
		{name: "a missing required parameter", method: "concat", params: `{"right":"!"}`,
			want: []catalog.Problem{{Message: `t.concat requires parameter "left"`}}},
		{name: "two missing", method: "concat", params: `{}`,
			want: []catalog.Problem{{Message: `t.concat requires parameters "left", "right"`}}},
		{name: "a bound parameter counts as present", method: "concat", params: `{"right":"!"}`, bound: []string{"left"}},
		{name: "a wrong type", method: "concat", params: `{"left":1,"right":"x"}`,
			want: []catalog.Problem{{Message: `parameter "left" must be string, not number`}}},
		{name: "a parameter the schema forbids", method: "concat", params: `{"left":"a","right":"b","rigth":"c"}`,
			want: []catalog.Problem{{Message: `t.concat has no parameter "rigth"`}}},
		{name: "a binding into a parameter the schema forbids", method: "concat", params: `{"left":"a","right":"b"}`, bound: []string{"prefix"},
			want: []catalog.Problem{{Binding: "prefix", Message: `t.concat has no parameter "prefix"`}}},
		{name: "a binding that unevaluatedProperties forbids", method: "strict", params: `{}`, bound: []string{"x"},
			want: []catalog.Problem{{Binding: "x", Message: `t.strict has no parameter "x"`}}},
		{name: "a bound value is not checked", method: "strings", params: `{}`, bound: []string{"x"}},
		{name: "a binding that unevaluatedProperties allows", method: "strict", params: `{}`, bound: []string{"a"}},
		{name: "nested problems, in instance order", method: "nested", params: `{"opts":{"mode":"c","n":0.5,"extra":true}}`,
			want: []catalog.Problem{
				{Message: `parameter "opts": property "extra" is not allowed`},
				{Message: `/opts/mode is not a value t.nested allows`},
				{Message: `/opts/n must be integer, not number`},
			}},
		{name: "a nested required property", method: "nested", params: `{"opts":{}}`,
			want: []catalog.Problem{{Message: `parameter "opts": property "mode" is required`}}},
		{name: "no schema, anything goes", method: "open", params: `{"anything":[1,{"x":null}]}`},
		{name: "oneOf at the top", method: "either", params: `{}`,
			want: []catalog.Problem{{Message: `the parameters object matches none of the schemas of oneOf`}}},
		{name: "oneOf matching twice", method: "either", params: `{"a":"x","b":1}`,
			want: []catalog.Problem{{Message: `the parameters object matches more than one of the schemas of oneOf`}}},
		{name: "oneOf at the top of a step with bindings is not checked", method: "either", params: `{}`, bound: []string{"a"}},
		{name: "a literal parameter named by a binding stays literal", method: "concat", params: `{"left":1,"right":"b"}`, bound: []string{"left"},
			want: []catalog.Problem{{Message: `parameter "left" must be string, not number`}}},
		{name: "at most 20 problems", method: "strings",
			params: `{` + strings.TrimSuffix(strings.Repeat(`"p":1,`, 1), ",") + manyNumbers(30) + `}`,
			want:   twenty()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := cat.Lookup("t", tt.method)
			require.NotNil(t, m)
			got := m.Check(params(t, tt.params), tt.bound)
			require.Equal(t, messages(tt.want), messages(got))
			require.Equal(t, got, m.Check(params(t, tt.params), tt.bound), "the same answer every time")
		})
	}
}

// manyNumbers is n numeric members ",p00":0 ... for an object.
func manyNumbers(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `,"p%02d":%d`, i, i)
	}
	return b.String()
}

// twenty are the first 20 problems of manyNumbers(30) and "p" under
// "strings", in key order.
func twenty() []catalog.Problem {
	out := []catalog.Problem{{Message: `parameter "p" must be string, not number`}}
	for i := range 19 {
		out = append(out, catalog.Problem{Message: fmt.Sprintf(`parameter "p%02d" must be string, not number`, i)})
	}
	return out
}

// messages are the problems as "binding: message" lines.
func messages(ps []catalog.Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Binding+": "+p.Message)
	}
	return out
}

// TestCheckNeverQuotesValues: a problem names parameters, keys and
// keywords, never a value, whatever fails.
func TestCheckNeverQuotesValues(t *testing.T) {
	t.Parallel()
	cat, err := catalog.Compile(describe(t, `{"domains":[{"name":"t","methods":[{"name":"m","parametersSchema":{
		"type":"object","additionalProperties":false,"required":["need"],
		"properties":{"s":{"type":"string","pattern":"^x$","minLength":100,"format":"email"},
		"e":{"enum":["x"]},"c":{"const":"x"},"n":{"type":"number","maximum":1,"multipleOf":7},
		"l":{"type":"array","uniqueItems":true,"items":{"type":"string"},"contains":{"const":"x"}},
		"o":{"type":"object","propertyNames":{"maxLength":1}}}}}]}]}`))
	require.NoError(t, err)
	got := cat.Lookup("t", "m").Check(params(t, `{"s":"hunter2","e":"hunter2","c":"hunter2","n":123456789,
		"l":["hunter2","hunter2"],"o":{"long":"hunter2"},"extra":"hunter2"}`), nil)
	require.Len(t, got, 11, "%v", got)
	for _, p := range got {
		require.NotContains(t, p.Message, "hunter2", "problem %q", p.Message)
		require.NotContains(t, p.Message, "123456789", "problem %q", p.Message)
	}
}
