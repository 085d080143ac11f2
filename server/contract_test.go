package server_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/server"
)

// Stage-4 promises to forward a plan verbatim, and server.ToStage3 maps it
// field by field. These tests fail when the two contracts drift apart, so
// that a field added to stage4.v1.Plan (or to the Stage-3 request) cannot
// be dropped silently.

// counterparts names, for each stage4.v1 message inside a plan, the Stage-3
// message with the same fields. Types outside both packages (such as
// google.protobuf.Struct) must be the same type on both sides.
var counterparts = map[protoreflect.FullName]protoreflect.FullName{
	"stage4.v1.Plan":        "stage3.v1.ExecuteMultiDomainPlanRequest",
	"stage4.v1.Step":        "stage3.v1.Step",
	"stage4.v1.DataBinding": "stage3.v1.DataBinding",
}

// counterpart is the Stage-3 type a field of Stage-4 type name must have.
func counterpart(name protoreflect.FullName) protoreflect.FullName {
	if c, ok := counterparts[name]; ok {
		return c
	}
	return name
}

func TestPlanMatchesStage3RequestFieldByField(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		stage4 protoreflect.MessageDescriptor
		stage3 protoreflect.MessageDescriptor
	}{
		{name: "Plan", stage4: (&stage4v1.Plan{}).ProtoReflect().Descriptor(), stage3: (&stage3v1.ExecuteMultiDomainPlanRequest{}).ProtoReflect().Descriptor()},
		{name: "Step", stage4: (&stage4v1.Step{}).ProtoReflect().Descriptor(), stage3: (&stage3v1.Step{}).ProtoReflect().Descriptor()},
		{name: "DataBinding", stage4: (&stage4v1.DataBinding{}).ProtoReflect().Descriptor(), stage3: (&stage3v1.DataBinding{}).ProtoReflect().Descriptor()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, counterparts[tt.stage4.FullName()], tt.stage3.FullName(), "the pair is listed in counterparts")
			// Compare the lists first: a field on one side only is the
			// likeliest drift, and the diff names it.
			require.Equal(t, fieldList(tt.stage4), fieldList(tt.stage3), "the same field numbers and names on both sides")
			fields := tt.stage4.Fields()
			for i := range fields.Len() {
				f4 := fields.Get(i)
				f3 := tt.stage3.Fields().ByNumber(f4.Number())
				require.NotNil(t, f3)
				require.Equal(t, shape(f4), shape(f3), "field %s", f4.Name())
			}
		})
	}
}

// fieldList renders a message's fields as "number name", in number order.
func fieldList(md protoreflect.MessageDescriptor) []string {
	var out []string
	for i := range md.Fields().Len() {
		f := md.Fields().Get(i)
		out = append(out, fmt.Sprintf("%d %s", f.Number(), f.Name()))
	}
	return out
}

// fieldShape is everything about a field that decides its wire encoding
// and its meaning to a decoder, with message and enum types translated to
// their Stage-3 counterparts.
type fieldShape struct {
	Name        protoreflect.Name
	Kind        protoreflect.Kind
	Cardinality protoreflect.Cardinality
	IsMap       bool
	IsPacked    bool
	HasPresence bool
	Oneof       protoreflect.Name
	Type        protoreflect.FullName // message or enum type
}

// shape describes f for the comparison.
func shape(f protoreflect.FieldDescriptor) fieldShape {
	s := fieldShape{
		Name: f.Name(), Kind: f.Kind(), Cardinality: f.Cardinality(),
		IsMap: f.IsMap(), IsPacked: f.IsPacked(), HasPresence: f.HasPresence(),
	}
	if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
		s.Oneof = o.Name()
	}
	// counterpart leaves Stage-3 and shared types as they are, so both
	// sides end up named in Stage-3's terms.
	switch {
	case f.Message() != nil:
		s.Type = counterpart(f.Message().FullName())
	case f.Enum() != nil:
		s.Type = counterpart(f.Enum().FullName())
	}
	return s
}

// TestToStage3CopiesEveryField builds its plan by reflection, unlike the
// hand-written plans of TestToStage3MatchesTheWireEncoding, so a field
// added to the contract later is filled (and checked) too.
func TestToStage3CopiesEveryField(t *testing.T) {
	t.Parallel()
	plan := &stage4v1.Plan{}
	fill(t, plan.ProtoReflect())
	got := server.ToStage3(plan)

	requireEverySet(t, got.ProtoReflect(), "request")
	// The messages share one wire encoding: the plan's bytes read as a
	// Stage-3 request must be exactly what ToStage3 built, with nothing
	// left over as unknown fields (proto.Equal compares those too).
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(plan)
	require.NoError(t, err)
	want := &stage3v1.ExecuteMultiDomainPlanRequest{}
	require.NoError(t, proto.Unmarshal(b, want))
	require.True(t, proto.Equal(want, got), "ToStage3 differs from the plan's own encoding:\nwant %v\ngot  %v", want, got)
}

// fill sets every field of m, recursively, to a non-zero value; lists get
// two elements so that a copy of only the first shows.
func fill(t *testing.T, m protoreflect.Message) {
	t.Helper()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
			t.Fatalf("fill: %s is in a oneof; teach fill to set one member per oneof", f.FullName())
		}
		switch {
		case f.IsMap():
			t.Fatalf("fill: %s is a map; teach fill to add an entry", f.FullName())
		case f.IsList():
			l := m.Mutable(f).List()
			for n := range 2 {
				if f.Message() != nil {
					e := l.NewElement()
					fill(t, e.Message())
					l.Append(e)
				} else {
					l.Append(scalar(t, f, n+1))
				}
			}
		case f.Message() != nil:
			if f.Message().FullName() == "google.protobuf.Struct" {
				s, err := structpb.NewStruct(map[string]any{"key": "value"})
				require.NoError(t, err)
				m.Set(f, protoreflect.ValueOfMessage(s.ProtoReflect()))
				continue
			}
			if f.Message().FullName().Parent() != "stage4.v1" {
				t.Fatalf("fill: teach fill to set a %s (%s)", f.Message().FullName(), f.FullName())
			}
			fill(t, m.Mutable(f).Message())
		default:
			m.Set(f, scalar(t, f, 1))
		}
	}
}

// scalar is a non-zero value of f's kind, different for each n.
func scalar(t *testing.T, f protoreflect.FieldDescriptor, n int) protoreflect.Value {
	t.Helper()
	switch f.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fmt.Sprintf("%s-%d", f.Name(), n))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte(fmt.Sprintf("%s-%d", f.Name(), n)))
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(n))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(n))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(n))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(n))
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(n))
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(n))
	case protoreflect.EnumKind:
		values := f.Enum().Values()
		require.Greater(t, values.Len(), 1, "enum %s needs a non-zero value", f.Enum().FullName())
		return protoreflect.ValueOfEnum(values.Get(1 + (n-1)%(values.Len()-1)).Number())
	}
	t.Fatalf("scalar: unhandled kind %v of %s", f.Kind(), f.FullName())
	return protoreflect.Value{}
}

// requireEverySet fails when any field of m is unset, looking into every
// Stage-3 message; path names the field in the failure.
func requireEverySet(t *testing.T, m protoreflect.Message, path string) {
	t.Helper()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		p := path + "." + string(f.Name())
		require.True(t, m.Has(f), "%s is not set: ToStage3 drops it", p)
		inStage3 := f.Message() != nil && f.Message().FullName().Parent() == "stage3.v1"
		switch {
		case f.IsList() && inStage3:
			l := m.Get(f).List()
			require.Equal(t, 2, l.Len(), "%s", p)
			for n := range l.Len() {
				requireEverySet(t, l.Get(n).Message(), fmt.Sprintf("%s[%d]", p, n))
			}
		case f.IsList():
			require.Equal(t, 2, m.Get(f).List().Len(), "%s", p)
		case inStage3:
			requireEverySet(t, m.Get(f).Message(), p)
		}
	}
}
