package server

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// FuzzValidate feeds Validate whatever decodes as an ExecutePlanRequest: it
// must not panic or modify the request, must refuse with INVALID_ARGUMENT
// only, and a plan it accepts must be one Stage-3 can be given.
func FuzzValidate(f *testing.F) {
	nan := validPlan(2)
	nan.Steps[1].Parameters.Fields["n"] = structpb.NewNumberValue(math.NaN())
	forward := validPlan(3)
	forward.DataBindings[0].SourceStep = 2
	deep := validPlan(1)
	deep.Steps[0].Parameters = nestedObjects(40)
	for _, p := range []*stage4v1.Plan{validPlan(1), validPlan(8), nan, forward, deep, {}} {
		b, err := proto.Marshal(&stage4v1.ExecutePlanRequest{Plan: p})
		require.NoError(f, err)
		f.Add(b)
		f.Add(protowire.AppendVarint(protowire.AppendTag(b, 999, protowire.VarintType), 1))
	}
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, b []byte) {
		req := &stage4v1.ExecutePlanRequest{}
		if proto.Unmarshal(b, req) != nil {
			t.Skip()
		}
		before := proto.Clone(req)
		err := Validate(req)
		require.True(t, proto.Equal(before, req), "Validate modified its input")
		if err != nil {
			require.Equal(t, codes.InvalidArgument, status.Code(err), err.Error())
			return
		}
		p := req.GetPlan()
		require.NotEmpty(t, ContentDigest(p))
		require.Empty(t, req.ProtoReflect().GetUnknown())
		require.Empty(t, p.ProtoReflect().GetUnknown())
		require.True(t, len(p.GetSteps()) >= 1 && len(p.GetSteps()) <= 256, "steps: %d", len(p.GetSteps()))
		for _, st := range p.GetSteps() {
			require.NotEmpty(t, st.GetDomain())
			require.NotEmpty(t, st.GetMethod())
			require.NotNil(t, st.GetParameters())
		}
		for _, db := range p.GetDataBindings() {
			require.Less(t, db.GetSourceStep(), db.GetTargetStep())
			require.Less(t, int(db.GetTargetStep()), len(p.GetSteps()))
		}
	})
}
