package catalog

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
)

// Limits on a catalogue (see the package doc).
const (
	// MaxBytes bounds the encoded DescribeMethods answer.
	MaxBytes = 1 << 20
	// MaxMethods bounds the methods of all domains together.
	MaxMethods = 1024
	// MaxSchemaBytes bounds each schema, encoded as a google.protobuf.Struct.
	MaxSchemaBytes = 64 << 10
	// MaxSchemaDepth bounds the nesting of each schema's JSON, and is the
	// deepest parameters nest (server's limit, stage4.proto).
	MaxSchemaDepth = 32
	// MaxSubschemas bounds the expansion of each parameters schema.
	MaxSubschemas = 2048
	// maxNameChars is the longest domain or method name, as in stage4.proto.
	maxNameChars = 64
)

// ErrInvalid marks a DescribeMethods answer that Compile refuses.
var ErrInvalid = errors.New("invalid catalog")

// Catalog is a compiled catalogue: immutable, safe for concurrent use.
type Catalog struct {
	desc        *stage3v1.DescribeMethodsResponse
	domains     map[string]*domain
	domainNames []string // sorted, for messages
	methods     int
}

// domain is one domain's methods.
type domain struct {
	methods map[string]*Method
	names   []string // sorted, for messages
}

// Method is one method of a catalogue.
type Method struct {
	// Domain and Name say which method it is.
	Domain, Name string
	// schema checks the parameters; nil when they are not described.
	schema *jsonschema.Schema
}

// FullName is "domain.method".
func (m *Method) FullName() string { return m.Domain + "." + m.Name }

// Description returns the DescribeMethods answer the catalogue was
// compiled from. It is shared: callers must not modify it.
func (c *Catalog) Description() *stage3v1.DescribeMethodsResponse { return c.desc }

// Methods is the number of methods of all domains.
func (c *Catalog) Methods() int { return c.methods }

// HasDomain reports whether the catalogue has a domain of that name.
func (c *Catalog) HasDomain(name string) bool {
	_, ok := c.domains[name]
	return ok
}

// Lookup returns the method of that domain and name, or nil.
func (c *Catalog) Lookup(domainName, methodName string) *Method {
	if d, ok := c.domains[domainName]; ok {
		return d.methods[methodName]
	}
	return nil
}

// DomainNames returns the sorted names of the domains. The slice is
// shared: callers must not modify it.
func (c *Catalog) DomainNames() []string { return c.domainNames }

// MethodNames returns the sorted names of a domain's methods (nil for an
// unknown domain). The slice is shared: callers must not modify it.
func (c *Catalog) MethodNames(domainName string) []string {
	if d, ok := c.domains[domainName]; ok {
		return d.names
	}
	return nil
}

// Compile checks a DescribeMethods answer against the limits of the
// package doc and compiles every parameters schema. Its errors wrap
// ErrInvalid.
func Compile(resp *stage3v1.DescribeMethodsResponse) (*Catalog, error) {
	if n := proto.Size(resp); n > MaxBytes {
		return nil, invalid("the answer is %d bytes, over %d", n, MaxBytes)
	}
	c := &Catalog{desc: resp, domains: map[string]*domain{}}
	compiler := jsonschema.NewCompiler()
	// Pinned, so that a new release of the library cannot change what an
	// unlabelled schema means.
	compiler.DefaultDraft(jsonschema.Draft2020)
	compiler.UseLoader(noLoader{})
	var urls []string
	var pending []*Method
	for _, d := range resp.GetDomains() {
		if !isName(d.GetName()) {
			return nil, invalid("domain name %q is not a lowercase identifier of at most %d characters", cut(d.GetName()), maxNameChars)
		}
		if _, dup := c.domains[d.GetName()]; dup {
			return nil, invalid("domain %q is listed twice", d.GetName())
		}
		dom := &domain{methods: map[string]*Method{}}
		c.domains[d.GetName()] = dom
		for _, m := range d.GetMethods() {
			full := d.GetName() + "." + m.GetName()
			if !isName(m.GetName()) {
				return nil, invalid("method name %q of domain %q is not a lowercase identifier of at most %d characters", cut(m.GetName()), d.GetName(), maxNameChars)
			}
			if _, dup := dom.methods[m.GetName()]; dup {
				return nil, invalid("method %s is listed twice", full)
			}
			if c.methods++; c.methods > MaxMethods {
				return nil, invalid("more than %d methods", MaxMethods)
			}
			method := &Method{Domain: d.GetName(), Name: m.GetName()}
			dom.methods[m.GetName()] = method
			if err := checkSchema(m.GetOutputSchema()); err != nil {
				return nil, invalid("output schema of %s: %v", full, err)
			}
			if m.GetParametersSchema() == nil {
				continue // not described: any object
			}
			if err := checkSchema(m.GetParametersSchema()); err != nil {
				return nil, invalid("parameters schema of %s: %v", full, err)
			}
			u := schemaURL(method)
			if err := compiler.AddResource(u, m.GetParametersSchema().AsMap()); err != nil {
				return nil, invalid("parameters schema of %s: %v", full, err)
			}
			urls = append(urls, u)
			pending = append(pending, method)
		}
		dom.names = slices.Sorted(maps.Keys(dom.methods))
	}
	c.domainNames = slices.Sorted(maps.Keys(c.domains))
	// Compiled after every resource is added, so that a schema may refer
	// to another method's.
	for i, m := range pending {
		s, err := compiler.Compile(urls[i])
		if err != nil {
			return nil, invalid("parameters schema of %s: %v", m.FullName(), err)
		}
		if err := checkExpansion(s); err != nil {
			return nil, invalid("parameters schema of %s: %v", m.FullName(), err)
		}
		m.schema = s
	}
	return c, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// schemaURL names a method's schema for references between schemas. The
// .invalid domain never resolves, and nothing is loaded anyway.
func schemaURL(m *Method) string {
	return "https://stage3.invalid/methods/" + m.Domain + "/" + m.Name + ".json"
}

// noLoader refuses every document that is not a resource of the
// catalogue: the library would otherwise read local files.
type noLoader struct{}

func (noLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("%s is not a schema of the catalog; references may not load anything else", url)
}

// isName reports whether s can be a step's domain or method
// (^[a-z][a-z0-9_]*$, at most 64 characters, as in stage4.proto).
func isName(s string) bool {
	if len(s) == 0 || len(s) > maxNameChars || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// cut shortens a name from Stage-3 for an error message.
func cut(s string) string {
	if len(s) > maxNameChars {
		return s[:maxNameChars] + "..."
	}
	return s
}

// checkSchema checks a schema's size and nesting; nil passes.
func checkSchema(s *structpb.Struct) error {
	if s == nil {
		return nil
	}
	if n := proto.Size(s); n > MaxSchemaBytes {
		return fmt.Errorf("%d bytes, over %d", n, MaxSchemaBytes)
	}
	if !withinDepth(s, 1) {
		return fmt.Errorf("nested deeper than %d", MaxSchemaDepth)
	}
	return nil
}

func withinDepth(s *structpb.Struct, depth int) bool {
	if depth > MaxSchemaDepth {
		return false
	}
	for _, v := range s.GetFields() {
		if !valueWithinDepth(v, depth) {
			return false
		}
	}
	return true
}

func valueWithinDepth(v *structpb.Value, depth int) bool {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StructValue:
		return withinDepth(k.StructValue, depth+1)
	case *structpb.Value_ListValue:
		if depth+1 > MaxSchemaDepth {
			return false
		}
		for _, e := range k.ListValue.GetValues() {
			if !valueWithinDepth(e, depth+1) {
				return false
			}
		}
	}
	return true
}

// checkExpansion counts the subschemas of s with every reference
// followed, a cycle at most MaxSchemaDepth+1 times (a cycle that does not
// go deeper into the parameters fails validation at its second turn,
// and parameters nest at most MaxSchemaDepth deep), and refuses more than
// MaxSubschemas: what checking one value can cost at worst. Without it, a
// few kilobytes of anyOf over references would take exponential time.
func checkExpansion(s *jsonschema.Schema) error {
	e := expansion{left: MaxSubschemas, onPath: map[*jsonschema.Schema]int{}}
	e.walk(s)
	return e.err
}

type expansion struct {
	left   int
	onPath map[*jsonschema.Schema]int // how often each schema is on the path from the root
	err    error
}

func (e *expansion) walk(s *jsonschema.Schema) {
	if s == nil || e.err != nil {
		return
	}
	if e.left--; e.left < 0 {
		e.err = fmt.Errorf("more than %d subschemas once references are expanded", MaxSubschemas)
		return
	}
	if s.DynamicRef != nil || s.RecursiveRef != nil {
		e.err = errors.New("$dynamicRef and $recursiveRef are not supported")
		return
	}
	if e.onPath[s] > MaxSchemaDepth {
		return // a cycle that deep cannot be followed by any parameters
	}
	e.onPath[s]++
	defer func() { e.onPath[s]-- }()
	e.walk(s.Ref)
	e.walk(s.Not)
	e.walkAll(s.AllOf)
	e.walkAll(s.AnyOf)
	e.walkAll(s.OneOf)
	e.walk(s.If)
	e.walk(s.Then)
	e.walk(s.Else)
	e.walk(s.PropertyNames)
	e.walkMap(s.Properties)
	for _, sub := range s.PatternProperties {
		e.walk(sub)
	}
	e.walkAny(s.AdditionalProperties)
	for _, dep := range s.Dependencies {
		e.walkAny(dep)
	}
	e.walkMap(s.DependentSchemas)
	e.walk(s.UnevaluatedProperties)
	e.walk(s.Contains)
	e.walkAny(s.Items)
	e.walkAny(s.AdditionalItems)
	e.walkAll(s.PrefixItems)
	e.walk(s.Items2020)
	e.walk(s.UnevaluatedItems)
	e.walk(s.ContentSchema)
}

func (e *expansion) walkAll(ss []*jsonschema.Schema) {
	for _, s := range ss {
		e.walk(s)
	}
}

// walkMap walks the schemas of m in any order: the count does not
// depend on it.
func (e *expansion) walkMap(m map[string]*jsonschema.Schema) {
	for _, s := range m {
		e.walk(s)
	}
}

// walkAny walks the keywords whose value is a schema or something else
// (a bool, a list of schemas, a list of property names).
func (e *expansion) walkAny(v any) {
	switch v := v.(type) {
	case *jsonschema.Schema:
		e.walk(v)
	case []*jsonschema.Schema:
		e.walkAll(v)
	}
}
