package stage3ref

import (
	"context"
	"maps"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
)

// DescribeMethods returns the executor's catalogue: every domain and
// method of its table, sorted by name, with their parameters and outputs
// as JSON Schemas. Faults do not apply to it: they are about executions.
func (s *Service) DescribeMethods(context.Context, *stage3v1.DescribeMethodsRequest) (*stage3v1.DescribeMethodsResponse, error) {
	return proto.CloneOf(catalogue()), nil
}

// Catalogue returns what DescribeMethods answers, for tests that hold
// Stage-4's view of it against the executor's.
func Catalogue() *stage3v1.DescribeMethodsResponse {
	return proto.CloneOf(catalogue())
}

// catalogue builds the response once: the table never changes.
var catalogue = sync.OnceValue(func() *stage3v1.DescribeMethodsResponse {
	resp := &stage3v1.DescribeMethodsResponse{}
	for _, dname := range slices.Sorted(maps.Keys(domains)) {
		d := domains[dname]
		dd := &stage3v1.DomainDescription{Name: dname, Description: d.description}
		for _, mname := range slices.Sorted(maps.Keys(d.methods)) {
			m := d.methods[mname]
			dd.Methods = append(dd.Methods, &stage3v1.MethodDescription{
				Name:             mname,
				Description:      m.description,
				ParametersSchema: mustStruct(m.params),
				OutputSchema:     mustStruct(m.output),
			})
		}
		resp.Domains = append(resp.Domains, dd)
	}
	return resp
})

// mustStruct converts a schema of the table, which holds only JSON values:
// an error is a bug in the table, which the package's tests catch.
func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic("stage3ref: a schema of the method table is not JSON: " + err.Error())
	}
	return s
}
