package witness_test

import (
	"fmt"
	"strings"

	"github.com/stage4/stage4/internal/witness"
)

func ExampleParsePolicy() {
	p, err := witness.ParsePolicy(strings.NewReader(`
# Two of operator A's three witnesses, and operator B's witness.
witness a.example/w1 3ee2a8a7283cb2fd728943daa127ef09e483071a8b4bc699ba4522f09b14cfde https://a.example/w1
witness a.example/w2 9035dd13c4c9eb3d8f71adf9cfd629abbcb6849a4d8ec9ed772996aaeab8fa65 https://a.example/w2
witness a.example/w3 5fccc0049983d8a901e26c12a6feb43b7676516def3aa27ecd69f7efdb53286d https://a.example/w3
group a 2 a.example/w1 a.example/w2 a.example/w3
witness b.example/w db1cc15465916ffc94ad88d30c2a0ed54065a61baeb50cc827007a4867add1f5 https://b.example/w
group a-and-b all a b.example/w
quorum a-and-b
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(p.QuorumMet([]string{"a.example/w1", "a.example/w3"}))
	fmt.Println(p.QuorumMet([]string{"a.example/w1", "a.example/w3", "b.example/w"}))
	w, _ := p.Witness("b.example/w")
	fmt.Println(w.VerifierKey())
	// Output:
	// false
	// true
	// b.example/w+ccb7684a+BNscwVRlkW/8lK2I0wwqDtVAZaYbrrUMyCcAekhnrdH1
}
