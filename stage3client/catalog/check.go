package catalog

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"google.golang.org/protobuf/types/known/structpb"
)

// Bounds on what Check reports, so that a hostile plan or schema cannot
// make its answer grow with them.
const (
	// maxProblems is how many problems Check returns for one step.
	maxProblems = 20
	// maxListedNames is how many names a message lists.
	maxListedNames = 5
	// maxPointerBytes bounds a JSON pointer in a message.
	maxPointerBytes = 256
)

// Problem is one way in which a step's parameters fail its method's
// schema. Its message names parameters and the schema's keywords, never a
// value: it may be kept and shown where values must not be.
type Problem struct {
	// Binding is the bound parameter the problem is about (the schema does
	// not allow a parameter of that name), or "" for the parameters
	// themselves.
	Binding string
	// Message says what is wrong and where, e.g.
	// `text.upper requires parameter "text"`.
	Message string

	at []string // the instance location, for the order of problems
}

// Check holds a step's parameters to the method's schema, with bound
// naming the parameters that data bindings fill (see the package doc for
// what is and is not checked of those). It returns nil when they pass or
// the method does not describe its parameters, else at most 20 problems in
// a fixed order. params must hold JSON values only (no NaN or infinity):
// server's own rules see to that before it calls Check.
func (m *Method) Check(params *structpb.Struct, bound []string) []Problem {
	if m.schema == nil {
		return nil
	}
	inst := params.AsMap()
	isBound := make(map[string]bool, len(bound))
	for _, b := range bound {
		if _, literal := inst[b]; !literal {
			inst[b] = nil // present, value unknown
			isBound[b] = true
		}
	}
	err := m.schema.Validate(inst)
	if err == nil {
		return nil
	}
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return []Problem{{Message: m.FullName() + ": the parameters could not be checked"}}
	}
	c := checker{method: m.FullName(), bound: isBound}
	c.collect(verr)
	slices.SortFunc(c.problems, func(a, b Problem) int {
		return cmp.Or(strings.Compare(a.Binding, b.Binding), slices.Compare(a.at, b.at), strings.Compare(a.Message, b.Message))
	})
	c.problems = slices.CompactFunc(c.problems, func(a, b Problem) bool { return a.Binding == b.Binding && a.Message == b.Message })
	return c.problems[:min(len(c.problems), maxProblems)]
}

// checker turns the library's tree of errors into Problems.
type checker struct {
	method   string
	bound    map[string]bool
	problems []Problem
}

// collect reports the leaves of err's tree, and the applicators whose
// branches would only confuse (anyOf, oneOf, not) as one problem each.
func (c *checker) collect(err *jsonschema.ValidationError) {
	switch err.ErrorKind.(type) {
	case *kind.Schema, *kind.Group, *kind.Reference, *kind.AllOf:
		for _, cause := range err.Causes {
			c.collect(cause)
		}
		return
	}
	at := err.InstanceLocation
	if len(at) > 0 && c.bound[at[0]] {
		// At or below a bound parameter: only its name can be wrong.
		if _, notAllowed := err.ErrorKind.(*kind.FalseSchema); notAllowed && len(at) == 1 {
			c.addBinding(at[0])
		}
		return
	}
	switch k := err.ErrorKind.(type) {
	case *kind.AnyOf, *kind.OneOf, *kind.Not:
		if len(at) == 0 && len(c.bound) > 0 {
			return // may depend on a bound value
		}
	case *kind.AdditionalProperties:
		var literal []string
		for _, p := range k.Properties {
			if len(at) == 0 && c.bound[p] {
				c.addBinding(p)
			} else {
				literal = append(literal, p)
			}
		}
		if len(literal) == 0 {
			return
		}
		slices.Sort(literal)
		if len(at) == 0 {
			c.add(at, "%s has no %s %s", c.method, plural(len(literal), "parameter", "parameters"), names(literal))
		} else {
			c.add(at, "%s: %s %s not allowed", where(at), plural(len(literal), "property", "properties"), names(literal)+plural(len(literal), " is", " are"))
		}
		return
	}
	if _, ok := err.ErrorKind.(*kind.PropertyNames); ok {
		at = nil
	}
	c.add(at, "%s", c.describe(at, err.ErrorKind))
}

func (c *checker) addBinding(name string) {
	c.problems = append(c.problems, Problem{Binding: name, Message: fmt.Sprintf("%s has no parameter %s", c.method, quote(name))})
}

func (c *checker) add(at []string, format string, args ...any) {
	c.problems = append(c.problems, Problem{Message: fmt.Sprintf(format, args...), at: at})
}

// describe says what failed at at, by the kind of failure, without the
// value.
func (c *checker) describe(at []string, k jsonschema.ErrorKind) string {
	switch k := k.(type) {
	case *kind.Required:
		if len(at) == 0 {
			return fmt.Sprintf("%s requires %s %s", c.method, plural(len(k.Missing), "parameter", "parameters"), names(k.Missing))
		}
		return fmt.Sprintf("%s: %s %s", where(at), plural(len(k.Missing), "property", "properties"), names(k.Missing)+plural(len(k.Missing), " is required", " are required"))
	case *kind.FalseSchema:
		if len(at) == 1 {
			return fmt.Sprintf("%s has no parameter %s", c.method, quote(at[0]))
		}
		return fmt.Sprintf("%s is not allowed", where(at))
	case *kind.Type:
		return fmt.Sprintf("%s must be %s, not %s", where(at), strings.Join(k.Want, " or "), k.Got)
	case *kind.Enum, *kind.Const:
		return fmt.Sprintf("%s is not a value %s allows", where(at), c.method)
	case *kind.AnyOf:
		return fmt.Sprintf("%s matches none of the schemas of anyOf", where(at))
	case *kind.OneOf:
		if k.Subschemas == nil {
			return fmt.Sprintf("%s matches none of the schemas of oneOf", where(at))
		}
		return fmt.Sprintf("%s matches more than one of the schemas of oneOf", where(at))
	case *kind.Not:
		return fmt.Sprintf("%s matches the schema of not", where(at))
	case *kind.PropertyNames:
		// Not where: the library reports this one's location wrongly
		// (v6.0.3 keeps a slice that later keywords overwrite).
		return fmt.Sprintf("property name %s is not allowed by %s", quote(k.Property), c.method)
	case *kind.DependentRequired:
		return fmt.Sprintf("%s: %s %s required with %s", where(at), plural(len(k.Missing), "property", "properties"),
			names(k.Missing)+plural(len(k.Missing), " is", " are"), quote(k.Prop))
	case *kind.Dependency:
		return fmt.Sprintf("%s: %s %s required with %s", where(at), plural(len(k.Missing), "property", "properties"),
			names(k.Missing)+plural(len(k.Missing), " is", " are"), quote(k.Prop))
	}
	kw := "the schema"
	if k != nil {
		if path := k.KeywordPath(); len(path) > 0 {
			kw = quote(path[0])
		}
	}
	return fmt.Sprintf("%s fails %s of %s", where(at), kw, c.method)
}

// where names a place in the parameters: the parameters themselves, a
// parameter, or a JSON pointer (RFC 6901) below one.
func where(at []string) string {
	switch len(at) {
	case 0:
		return "the parameters object"
	case 1:
		return "parameter " + quote(at[0])
	}
	var b strings.Builder
	for _, tok := range at {
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(tok))
		if b.Len() > maxPointerBytes {
			break
		}
	}
	return bound(b.String(), maxPointerBytes)
}

// names quotes up to maxListedNames names and counts the rest.
func names(ns []string) string {
	q := make([]string, 0, min(len(ns), maxListedNames))
	for _, n := range ns[:min(len(ns), maxListedNames)] {
		q = append(q, quote(n))
	}
	s := strings.Join(q, ", ")
	if len(ns) > maxListedNames {
		s += fmt.Sprintf(" and %d more", len(ns)-maxListedNames)
	}
	return s
}

// quote quotes a name (a parameter name, 256 bytes at most in a valid
// plan, or a keyword), cut to maxPointerBytes.
func quote(s string) string {
	return fmt.Sprintf("%q", bound(s, maxPointerBytes))
}

// bound cuts s to at most n bytes on a character boundary.
func bound(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
