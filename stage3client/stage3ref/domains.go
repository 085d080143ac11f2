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

// domains is the executor's fixed, read-only method table.
var domains = map[string]map[string]method{
	"text": {
		"upper":  textMethod(strings.ToUpper),
		"lower":  textMethod(strings.ToLower),
		"length": textLength,
		"concat": textConcat,
	},
	"math": {
		"add":      mathPair(func(a, b float64) float64 { return a + b }),
		"multiply": mathPair(func(a, b float64) float64 { return a * b }),
		"sum":      mathSum,
	},
	"json": {
		"get":   jsonGet,
		"keys":  jsonKeys,
		"merge": jsonMerge,
	},
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
