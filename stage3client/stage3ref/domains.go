package stage3ref

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// method runs one step on its bound parameters. Its errors describe bad
// parameters and become INVALID_ARGUMENT.
type method func(params *structpb.Struct) (*structpb.Struct, error)

// spec is a method with what DescribeMethods says of it.
type spec struct {
	run         method
	description string
	// params and output are JSON Schemas of the parameters object and of
	// the output object.
	params, output map[string]any
}

// domain is a named set of methods.
type domain struct {
	description string
	methods     map[string]spec
}

// domains is the executor's fixed, read-only method table.
var domains = map[string]domain{
	"text": {description: "Text transformations.", methods: map[string]spec{
		"upper":  {textMethod(strings.ToUpper), "Upper-cases text.", object(str("text")), object(str("text"))},
		"lower":  {textMethod(strings.ToLower), "Lower-cases text.", object(str("text")), object(str("text"))},
		"length": {textLength, "Counts the characters (Unicode code points) of text.", object(str("text")), object(num("length"))},
		"concat": {textConcat, "Joins left and right.", object(str("left"), str("right")), object(str("text"))},
	}},
	"math": {description: "Arithmetic on finite numbers.", methods: map[string]spec{
		"add": {mathPair(func(a, b float64) float64 { return a + b }), "Adds a and b.",
			object(num("a"), num("b")), object(num("result"))},
		"multiply": {mathPair(func(a, b float64) float64 { return a * b }), "Multiplies a by b.",
			object(num("a"), num("b")), object(num("result"))},
		"sum": {mathSum, "Adds up values.",
			object(property{"values", map[string]any{"type": "array", "items": map[string]any{"type": "number"}}}), object(num("result"))},
	}},
	"json": {description: "Reading and combining JSON objects.", methods: map[string]spec{
		"get":   {jsonGet, "Returns the value of key in object.", object(obj("object"), str("key")), object(property{"value", map[string]any{}})},
		"keys":  {jsonKeys, "Lists the keys of object, sorted.", object(obj("object")), object(property{"keys", map[string]any{"type": "array", "items": map[string]any{"type": "string"}}})},
		"merge": {jsonMerge, "Merges patch into base, shallowly: patch's keys win.", object(obj("base"), obj("patch")), object(obj("object"))},
	}},
}

// property is a required property of an object schema.
type property struct {
	name   string
	schema map[string]any
}

func str(name string) property { return property{name, map[string]any{"type": "string"}} }
func num(name string) property { return property{name, map[string]any{"type": "number"}} }
func obj(name string) property { return property{name, map[string]any{"type": "object"}} }

// object is the JSON Schema of an object that has exactly props, all
// required. The executor itself ignores parameters its methods do not
// read; its catalogue forbids them, so that Stage-4 can refuse a misspelt
// parameter name before the plan runs.
func object(props ...property) map[string]any {
	properties := map[string]any{}
	required := []any{}
	for _, p := range props {
		properties[p.name] = p.schema
		required = append(required, p.name)
	}
	return map[string]any{
		"$schema":              "https://json-schema.org/draft/2020-12/schema",
		"type":                 "object",
		"properties":           properties,
		"required":             required,
		"additionalProperties": false,
	}
}

func textMethod(f func(string) string) method {
	return func(p *structpb.Struct) (*structpb.Struct, error) {
		s, err := param(p, "text", asString)
		if err != nil {
			return nil, err
		}
		return output("text", structpb.NewStringValue(f(s))), nil
	}
}

func textLength(p *structpb.Struct) (*structpb.Struct, error) {
	s, err := param(p, "text", asString)
	if err != nil {
		return nil, err
	}
	return output("length", structpb.NewNumberValue(float64(utf8.RuneCountInString(s)))), nil
}

func textConcat(p *structpb.Struct) (*structpb.Struct, error) {
	left, err := param(p, "left", asString)
	if err != nil {
		return nil, err
	}
	right, err := param(p, "right", asString)
	if err != nil {
		return nil, err
	}
	return output("text", structpb.NewStringValue(left+right)), nil
}

func mathPair(f func(a, b float64) float64) method {
	return func(p *structpb.Struct) (*structpb.Struct, error) {
		a, err := param(p, "a", asNumber)
		if err != nil {
			return nil, err
		}
		b, err := param(p, "b", asNumber)
		if err != nil {
			return nil, err
		}
		return number(f(a, b))
	}
}

func mathSum(p *structpb.Struct) (*structpb.Struct, error) {
	values, err := param(p, "values", asList)
	if err != nil {
		return nil, err
	}
	var sum float64
	for i, v := range values.GetValues() {
		n, ok := asNumber(v)
		if !ok {
			return nil, fmt.Errorf("parameter \"values\"[%d] must be a number", i)
		}
		sum += n
	}
	return number(sum)
}

// number refuses results that JSON cannot carry, since Stage-4 renders
// outputs as JSON.
func number(n float64) (*structpb.Struct, error) {
	if math.IsInf(n, 0) || math.IsNaN(n) {
		return nil, errors.New("result is not a finite number")
	}
	return output("result", structpb.NewNumberValue(n)), nil
}

func jsonGet(p *structpb.Struct) (*structpb.Struct, error) {
	obj, err := param(p, "object", asObject)
	if err != nil {
		return nil, err
	}
	key, err := param(p, "key", asString)
	if err != nil {
		return nil, err
	}
	v, ok := obj.GetFields()[key]
	if !ok {
		return nil, fmt.Errorf("object has no key %q", key)
	}
	return output("value", proto.CloneOf(v)), nil
}

func jsonKeys(p *structpb.Struct) (*structpb.Struct, error) {
	obj, err := param(p, "object", asObject)
	if err != nil {
		return nil, err
	}
	keys := &structpb.ListValue{}
	for _, k := range slices.Sorted(maps.Keys(obj.GetFields())) {
		keys.Values = append(keys.Values, structpb.NewStringValue(k))
	}
	return output("keys", structpb.NewListValue(keys)), nil
}

// jsonMerge is a shallow merge: patch's keys replace base's.
func jsonMerge(p *structpb.Struct) (*structpb.Struct, error) {
	base, err := param(p, "base", asObject)
	if err != nil {
		return nil, err
	}
	patch, err := param(p, "patch", asObject)
	if err != nil {
		return nil, err
	}
	merged := proto.CloneOf(base)
	if merged.Fields == nil {
		merged.Fields = map[string]*structpb.Value{}
	}
	for k, v := range patch.GetFields() {
		merged.Fields[k] = proto.CloneOf(v)
	}
	return output("object", structpb.NewStructValue(merged)), nil
}

func output(key string, v *structpb.Value) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{key: v}}
}

// param reads a required parameter of the kind that as accepts.
func param[T any](p *structpb.Struct, name string, as func(*structpb.Value) (T, bool)) (T, error) {
	var zero T
	v, ok := p.GetFields()[name]
	if !ok {
		return zero, fmt.Errorf("parameter %q is required", name)
	}
	t, ok := as(v)
	if !ok {
		return zero, fmt.Errorf("parameter %q has the wrong type", name)
	}
	return t, nil
}

func asString(v *structpb.Value) (string, bool) {
	_, ok := v.GetKind().(*structpb.Value_StringValue)
	return v.GetStringValue(), ok
}

func asNumber(v *structpb.Value) (float64, bool) {
	_, ok := v.GetKind().(*structpb.Value_NumberValue)
	return v.GetNumberValue(), ok
}

func asObject(v *structpb.Value) (*structpb.Struct, bool) {
	_, ok := v.GetKind().(*structpb.Value_StructValue)
	return v.GetStructValue(), ok
}

func asList(v *structpb.Value) (*structpb.ListValue, bool) {
	_, ok := v.GetKind().(*structpb.Value_ListValue)
	return v.GetListValue(), ok
}
