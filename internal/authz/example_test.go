package authz_test

import (
	"fmt"

	"github.com/stage4/stage4/internal/authz"
)

// ExampleParseReaders shows how --audit-readers is read: entries trimmed,
// sorted and deduplicated; "*" alone for every caller.
func ExampleParseReaders() {
	r, err := authz.ParseReaders(" spiffe://example.org/ns/audit/sa/auditor, dashboard.example.org ")
	fmt.Println(r.Identities(), r.AllowsAnyone(), err)
	r, err = authz.ParseReaders("*")
	fmt.Println(r.Identities(), r.AllowsAnyone(), err)
	_, err = authz.ParseReaders("*,dashboard.example.org")
	fmt.Println(err)
	// Output:
	// [dashboard.example.org spiffe://example.org/ns/audit/sa/auditor] false <nil>
	// [] true <nil>
	// "*" allows every caller and cannot be combined with identities
}
