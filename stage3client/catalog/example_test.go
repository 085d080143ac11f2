package catalog_test

import (
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stage4/stage4/stage3client/catalog"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// ExampleMethod_Check checks a step of text.concat whose left a data
// binding fills: the bound parameter counts as present, and only the
// literal one is wrong.
func ExampleMethod_Check() {
	cat, err := catalog.Compile(stage3ref.Catalogue())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(cat.Lookup("text", "uppercase") == nil, cat.MethodNames("text"))

	params, err := structpb.NewStruct(map[string]any{"right": 1, "rigth": "!"})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, p := range cat.Lookup("text", "concat").Check(params, []string{"left"}) {
		fmt.Println(p.Message)
	}
	// Output:
	// true [concat length lower upper]
	// text.concat has no parameter "rigth"
	// parameter "right" must be string, not number
}
