package authz

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/stage4/stage4/internal/identity"
)

// AnyCaller in a readers list allows every caller, authenticated or not:
// for a service mesh that enforces its own policy in front of Stage-4.
const AnyCaller = "*"

// Readers is who may call the protected methods: a set of identities taken
// from verified client certificates, or every caller. The zero value allows
// nobody. *Readers is a flag.Value, so that a flag parses it directly.
type Readers struct {
	any bool
	ids []string // sorted, without duplicates
}

// Everyone allows every caller.
func Everyone() Readers { return Readers{any: true} }

// ParseReaders parses a comma-separated list of identities, or "*" alone
// for every caller. An entry with a URL scheme (spiffe://trust.domain/x)
// names a URI SAN and matches URI SANs only; any other entry names a DNS
// SAN and matches DNS SANs only. Spaces around entries are ignored; an
// empty string allows nobody.
func ParseReaders(s string) (Readers, error) {
	var r Readers
	if strings.TrimSpace(s) == "" {
		return r, nil
	}
	for e := range strings.SplitSeq(s, ",") {
		e = strings.TrimSpace(e)
		switch {
		case e == "":
			return Readers{}, errors.New("empty entry in the readers list")
		case e == AnyCaller:
			r.any = true
		case strings.ContainsAny(e, " \t\n*"):
			return Readers{}, fmt.Errorf("reader %q: an identity has no spaces or wildcards", e)
		default:
			r.ids = append(r.ids, e)
		}
	}
	if r.any && len(r.ids) > 0 {
		// A list with "*" and names is a mistake either way: the names
		// would mean nothing.
		return Readers{}, fmt.Errorf("%q allows every caller and cannot be combined with identities", AnyCaller)
	}
	slices.Sort(r.ids)
	r.ids = slices.Compact(r.ids)
	return r, nil
}

// Set implements flag.Value.
func (r *Readers) Set(s string) error {
	parsed, err := ParseReaders(s)
	if err != nil {
		return err
	}
	*r = parsed
	return nil
}

// String implements flag.Value; ParseReaders reads it back.
func (r *Readers) String() string {
	if r == nil {
		return ""
	}
	if r.any {
		return AnyCaller
	}
	return strings.Join(r.ids, ",")
}

// AllowsAnyone reports whether every caller is allowed.
func (r Readers) AllowsAnyone() bool { return r.any }

// Identities returns the allowed identities, sorted; none for AnyCaller.
func (r Readers) Identities() []string { return slices.Clone(r.ids) }

// allows reports whether a caller with identity id is a reader.
func (r Readers) allows(id identity.Identity) bool {
	if r.any {
		return true
	}
	for _, name := range r.ids {
		if id.Matches(name) {
			return true
		}
	}
	return false
}
