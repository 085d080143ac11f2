package server

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
	"github.com/stage4/stage4/stage3client/catalog"
)

// Limits on parameter contents, as documented on stage4.v1.Step.parameters.
// They bound what Stage-4 audits and forwards, whatever the transport allows.
const (
	// maxParameterDepth is the deepest nesting of objects and lists; the
	// parameters object itself is at depth 1.
	maxParameterDepth = 32
	// maxParameterKeyBytes bounds every object key.
	maxParameterKeyBytes = 256
	// maxParameterStringBytes bounds every string value.
	maxParameterStringBytes = 65536
	// maxParameterTotalBytes bounds the keys and string values of all steps
	// together, with scalarBytes for each number, bool and null.
	maxParameterTotalBytes = 1 << 20
	// scalarBytes is what a number, bool or null counts towards
	// maxParameterTotalBytes, so that a plan of many tiny values is bounded too.
	scalarBytes = 8
)

// maxViolations caps the violations in an error's details so that a hostile
// plan cannot make the error (and its audit record) grow with the plan.
const maxViolations = 100

// maxPointerBytes caps a JSON pointer quoted in a violation message: keys are
// user data of up to 256 bytes, and paths can be 32 keys deep.
const maxPointerBytes = 256

// Rule ids of the rules that protovalidate cannot express.
const (
	ruleUnknownFields    = "stage4.unknown_fields"
	ruleBindingOrder     = "stage4.binding.source_before_target"
	ruleBindingTarget    = "stage4.binding.target_in_range"
	ruleBindingDuplicate = "stage4.binding.distinct_target"
	ruleBindingLiteral   = "stage4.binding.no_literal_overwrite"
	ruleValueKind        = "stage4.parameters.kind_set"
	ruleValueFinite      = "stage4.parameters.finite"
	ruleValueUTF8        = "stage4.parameters.utf8"
	ruleDepth            = "stage4.parameters.max_depth"
	ruleKeyBytes         = "stage4.parameters.key_max_bytes"
	ruleStringBytes      = "stage4.parameters.string_max_bytes"
	ruleTotalBytes       = "stage4.parameters.total_max_bytes"

	// Rules of Stage-3's catalogue (Validator).
	ruleCatalogDomain     = "stage4.catalog.unknown_domain"
	ruleCatalogMethod     = "stage4.catalog.unknown_method"
	ruleCatalogParameters = "stage4.catalog.parameters"
	ruleCatalogBinding    = "stage4.catalog.bound_parameter"
)

// maxListedNames is how many names of the catalogue a violation lists.
const maxListedNames = 10

// Field descriptors that the Go rules name in their violations' field paths.
var (
	stepsField           = (*stage4v1.Plan)(nil).ProtoReflect().Descriptor().Fields().ByName("steps")
	bindingsField        = (*stage4v1.Plan)(nil).ProtoReflect().Descriptor().Fields().ByName("data_bindings")
	parametersField      = (*stage4v1.Step)(nil).ProtoReflect().Descriptor().Fields().ByName("parameters")
	domainField          = (*stage4v1.Step)(nil).ProtoReflect().Descriptor().Fields().ByName("domain")
	methodField          = (*stage4v1.Step)(nil).ProtoReflect().Descriptor().Fields().ByName("method")
	sourceStepField      = (*stage4v1.DataBinding)(nil).ProtoReflect().Descriptor().Fields().ByName("source_step")
	targetStepField      = (*stage4v1.DataBinding)(nil).ProtoReflect().Descriptor().Fields().ByName("target_step")
	targetParameterField = (*stage4v1.DataBinding)(nil).ProtoReflect().Descriptor().Fields().ByName("target_parameter")
)

// skipParameterContents keeps protovalidate out of the parameters' maps:
// google.protobuf.Struct carries no rules, and walking its map by reflection
// was most of the cost of validating a plan. The Go walk checks them instead.
// Step.parameters itself is still validated, so "required" still holds.
var skipParameterContents = protovalidate.WithFilter(protovalidate.FilterFunc(
	func(_ protoreflect.Message, d protoreflect.Descriptor) bool {
		return d != structFields
	}))

// structFields is google.protobuf.Struct's map of keys to values.
var structFields = (*structpb.Struct)(nil).ProtoReflect().Descriptor().Fields().ByName("fields")

// pointerEscaper escapes a key as a JSON pointer token (RFC 6901).
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// PlanRequest is a request that carries a plan: *stage4v1.ExecutePlanRequest
// and *stage4v1.ValidatePlanRequest.
type PlanRequest interface {
	proto.Message
	GetPlan() *stage4v1.Plan
}

// Validate is the single validation entry point: ExecutePlan, ValidatePlan,
// the audit interceptor and the CLI all call it, so that they cannot
// disagree on what a valid plan is. It applies the protovalidate rules of
// stage4.proto, then the rules they cannot express: no unknown fields
// anywhere, bindings that point backwards into the plan without overwriting
// literal parameters, and parameters that are bounded JSON.
//
// It does not know Stage-3's methods: Validator adds those rules when
// Stage-3 describes them.
//
// It returns nil, or an INVALID_ARGUMENT status error with an ErrorInfo
// (reason PLAN_INVALID) and a buf.validate.Violations detail listing every
// violation (at most 100): protovalidate's first, then the Go rules' by
// group (unknown fields, bindings, parameters, and Validator's catalogue)
// and within a group in plan order. Any other failure is INTERNAL: when unsure, refuse. The same
// request always gives the same error, and req is never modified.
func Validate(req PlanRequest) error {
	return validateWith(protovalidate.GlobalValidator, nil, req)
}

// CatalogSource holds the catalogue of Stage-3's methods that a Validator
// checks plans against; *catalog.Cache is one.
type CatalogSource interface {
	// Snapshot returns what the source holds now; never nil. Its Catalog
	// is nil when there is no catalogue to check against.
	Snapshot() *catalog.Snapshot
}

// Validator is Validate with Stage-3's catalogue: while its source holds
// one, a plan must also name only listed domains and methods, and each
// step's parameters must match its method's schema (stage3client/catalog
// says exactly what that checks, bound parameters included). Without a
// catalogue it is Validate. A nil *Validator is Validate too.
type Validator struct {
	catalogs CatalogSource
}

// NewValidator returns a Validator that checks plans against what
// catalogs holds at each call; nil checks against no catalogue.
func NewValidator(catalogs CatalogSource) *Validator {
	return &Validator{catalogs: catalogs}
}

// Validate is the package's Validate plus the catalogue's rules, whose
// violations come after the others. It reads the catalogue once per call.
func (v *Validator) Validate(req PlanRequest) error {
	return validateWith(protovalidate.GlobalValidator, v.catalog(), req)
}

// catalog is the catalogue to check against now, or nil.
func (v *Validator) catalog() *catalog.Catalog {
	if v == nil || v.catalogs == nil {
		return nil
	}
	return v.catalogs.Snapshot().Catalog
}

// validateWith is Validate with the protovalidate validator as a parameter,
// so that tests can make it fail, and the catalogue to check against (nil
// for none).
func validateWith(validator protovalidate.Validator, cat *catalog.Catalog, req PlanRequest) error {
	if req == nil {
		return rpcerr.New(codes.Internal, rpcerr.Internal, "validate plan: no request", nil)
	}
	planField := req.ProtoReflect().Descriptor().Fields().ByName("plan")
	if planField == nil {
		return rpcerr.New(codes.Internal, rpcerr.Internal, "validate plan: request has no plan field", nil)
	}
	var found []*validate.Violation
	if err := validator.Validate(req, skipParameterContents); err != nil {
		var verr *protovalidate.ValidationError
		if !errors.As(err, &verr) {
			// A compilation or runtime error says nothing about the plan;
			// its text is about our internals, so it stays here.
			return rpcerr.New(codes.Internal, rpcerr.Internal, "validate plan: validator failed", nil)
		}
		for _, v := range verr.Violations {
			found = append(found, v.Proto)
		}
	}
	c := planChecker{planField: planField, cat: cat}
	c.check(req)
	total := len(found) + c.unknown.total + c.bindings.total + c.params.total + c.catalog.total
	if total == 0 {
		return nil
	}
	return violationsError(rpcerr.PlanInvalid, slices.Concat(found, c.unknown.items, c.bindings.items, c.params.items, c.catalog.items), total)
}

// violationsError returns an INVALID_ARGUMENT status error for reason whose
// message names the first of found and counts total, the number found before
// capping, and whose details hold found, capped at maxViolations.
func violationsError(reason stage4v1.ErrorReason, found []*validate.Violation, total int) error {
	found = found[:min(len(found), maxViolations)]
	msg := (&protovalidate.Violation{Proto: found[0]}).String()
	switch {
	case total == 2:
		msg += " (and 1 more violation)"
	case total > 2:
		msg += fmt.Sprintf(" (and %d more violations)", total-1)
	}
	return rpcerr.New(codes.InvalidArgument, reason, msg, nil, validate.Violations_builder{Violations: found}.Build())
}

// violationList collects violations up to maxViolations and only counts the
// rest, so that a hostile plan costs no more than its size.
type violationList struct {
	items []*validate.Violation
	total int
}

func (l *violationList) add(field *validate.FieldPath, ruleID, format string, args ...any) {
	l.total++
	if len(l.items) < maxViolations {
		l.items = append(l.items, validate.Violation_builder{
			Field:   proto.CloneOf(field), // Paths are shared while walking a step.
			RuleId:  new(ruleID),
			Message: new(fmt.Sprintf(format, args...)),
		}.Build())
	}
}

// planChecker applies the Go rules to one request. Each rule group has its
// own list, so that the order of the violations is the order of the rules
// and, within a rule group, the order in the plan.
type planChecker struct {
	planField protoreflect.FieldDescriptor
	cat       *catalog.Catalog // nil: no catalogue to check against

	unknown, bindings, params, catalog violationList

	// State of the walk through parameters.
	step       int                 // the step whose parameters are walked
	stepPath   *validate.FieldPath // its parameters' field path, built on first use
	totalBytes int                 // bytes counted so far, across steps
	entries    []structEntry       // stack of the objects' sorted entries
	at         jsonPointer         // where the walk is inside the parameters
}

// structEntry is one key and value of an object.
type structEntry struct {
	key   string
	value *structpb.Value
}

// check applies every Go rule to req, in plan order.
func (c *planChecker) check(req PlanRequest) {
	if hasUnknown(req) {
		c.unknown.add(nil, ruleUnknownFields, "request has unknown fields")
	}
	plan := req.GetPlan()
	if plan == nil {
		return // protovalidate reported it missing.
	}
	if hasUnknown(plan) {
		c.unknown.add(c.path(), ruleUnknownFields, "plan has unknown fields")
	}
	for i, st := range plan.GetSteps() {
		if hasUnknown(st) {
			c.unknown.add(c.path(indexElem(stepsField, i)), ruleUnknownFields, "step has unknown fields")
		}
		if p := st.GetParameters(); p != nil {
			c.step, c.stepPath = i, nil
			c.walkStruct(p, 1)
		}
	}
	c.checkBindings(plan)
	if c.cat != nil {
		c.checkCatalog(plan)
	}
}

// checkCatalog holds every step to Stage-3's catalogue: its domain and
// method must be listed, and its parameters must match the method's
// schema, with the parameters its bindings fill counted as present. The
// parameters are checked only when the plan's parameters passed the rules
// above, so that the schemas see bounded JSON and a plan that is invalid
// anyway costs no more.
func (c *planChecker) checkCatalog(plan *stage4v1.Plan) {
	steps := plan.GetSteps()
	checkParameters := c.unknown.total == 0 && c.params.total == 0
	type target struct {
		step      int
		parameter string
	}
	var bound map[int][]string // step -> the parameters bindings fill
	var binding map[target]int // -> the first binding that fills it
	if checkParameters {
		bound, binding = map[int][]string{}, map[target]int{}
		for j, b := range plan.GetDataBindings() {
			dst, param := int(b.GetTargetStep()), b.GetTargetParameter()
			if dst >= len(steps) {
				continue // reported by checkBindings
			}
			if _, dup := binding[target{dst, param}]; !dup {
				binding[target{dst, param}] = j
				bound[dst] = append(bound[dst], param)
			}
		}
	}
	for i, st := range steps {
		d, m := st.GetDomain(), st.GetMethod()
		if !isIdentifier(d) || !isIdentifier(m) {
			continue // protovalidate reported it
		}
		if !c.cat.HasDomain(d) {
			c.catalog.add(c.path(indexElem(stepsField, i), fieldElem(domainField)), ruleCatalogDomain,
				"domain %q is not in Stage-3's catalog (domains: %s)", d, listNames(c.cat.DomainNames()))
			continue
		}
		method := c.cat.Lookup(d, m)
		if method == nil {
			c.catalog.add(c.path(indexElem(stepsField, i), fieldElem(methodField)), ruleCatalogMethod,
				"method %q is not in domain %q of Stage-3's catalog (methods: %s)", m, d, listNames(c.cat.MethodNames(d)))
			continue
		}
		if !checkParameters || st.GetParameters() == nil {
			continue
		}
		c.step, c.stepPath = i, nil
		for _, p := range method.Check(st.GetParameters(), bound[i]) {
			if p.Binding != "" {
				j := binding[target{i, p.Binding}]
				c.catalog.add(c.path(indexElem(bindingsField, j), fieldElem(targetParameterField)), ruleCatalogBinding, "%s", p.Message)
				continue
			}
			c.catalog.add(c.parametersPath(), ruleCatalogParameters, "%s", p.Message)
		}
	}
}

// listNames lists up to maxListedNames names of the catalogue, which are
// identifiers of at most 64 characters, and counts the rest.
func listNames(names []string) string {
	s := strings.Join(names[:min(len(names), maxListedNames)], ", ")
	if len(names) > maxListedNames {
		s += fmt.Sprintf(" and %d more", len(names)-maxListedNames)
	}
	if s == "" {
		s = "none"
	}
	return s
}

// checkBindings checks that bindings point backwards to existing steps, feed
// each parameter at most once and never replace a literal parameter, so that
// Stage-3 runs exactly the plan the user wrote.
func (c *planChecker) checkBindings(plan *stage4v1.Plan) {
	bindings := plan.GetDataBindings()
	if len(bindings) == 0 {
		return
	}
	steps := plan.GetSteps()
	type target struct {
		step      uint32
		parameter string
	}
	fed := make(map[target]int, len(bindings))
	for i, b := range bindings {
		if hasUnknown(b) {
			c.unknown.add(c.path(indexElem(bindingsField, i)), ruleUnknownFields, "data binding has unknown fields")
		}
		src, dst, param := b.GetSourceStep(), b.GetTargetStep(), b.GetTargetParameter()
		if src >= dst {
			c.bindings.add(c.path(indexElem(bindingsField, i), fieldElem(sourceStepField)), ruleBindingOrder,
				"source_step %d must be less than target_step %d", src, dst)
		}
		if uint64(dst) >= uint64(len(steps)) {
			c.bindings.add(c.path(indexElem(bindingsField, i), fieldElem(targetStepField)), ruleBindingTarget,
				"target_step %d must be less than the number of steps, %d", dst, len(steps))
		} else if _, ok := steps[dst].GetParameters().GetFields()[param]; ok {
			c.bindings.add(c.path(indexElem(bindingsField, i), fieldElem(targetParameterField)), ruleBindingLiteral,
				"target_parameter is set literally in the parameters of step %d", dst)
		}
		if first, ok := fed[target{dst, param}]; ok {
			c.bindings.add(c.path(indexElem(bindingsField, i), fieldElem(targetParameterField)), ruleBindingDuplicate,
				"data_bindings[%d] already feeds this parameter of step %d", first, dst)
		} else {
			fed[target{dst, param}] = i
		}
	}
}

// walkStruct checks an object at depth and everything in it, keys in sorted
// order so that the violations come in the same order on every run.
func (c *planChecker) walkStruct(s *structpb.Struct, depth int) {
	if !c.enter("object", s, depth) {
		return
	}
	start := len(c.entries)
	for k, v := range s.GetFields() {
		c.entries = append(c.entries, structEntry{k, v})
	}
	end := len(c.entries)
	slices.SortFunc(c.entries[start:end], func(a, b structEntry) int { return strings.Compare(a.key, b.key) })
	for i := start; i < end; i++ {
		e := c.entries[i] // Re-read: nested walks may reallocate c.entries.
		c.at = append(c.at, segment{key: e.key, index: -1})
		c.checkText(e.key, "key", maxParameterKeyBytes, ruleKeyBytes)
		c.walkValue(e.value, depth)
		c.at = c.at[:len(c.at)-1]
	}
	c.entries = c.entries[:start]
}

// enter checks a container (kind "object" or "list") at c.at for unknown
// fields and depth, and reports whether its contents are to be walked.
func (c *planChecker) enter(kind string, m proto.Message, depth int) bool {
	if hasUnknown(m) {
		c.unknown.add(c.parametersPath(), ruleUnknownFields, "%s at %s has unknown fields", kind, c.at)
	}
	if depth > maxParameterDepth {
		c.params.add(c.parametersPath(), ruleDepth, "%s at %s is nested deeper than %d", kind, c.at, maxParameterDepth)
		return false
	}
	return true
}

func (c *planChecker) walkList(l *structpb.ListValue, depth int) {
	if !c.enter("list", l, depth) {
		return
	}
	for i, v := range l.GetValues() {
		c.at = append(c.at, segment{index: i})
		c.walkValue(v, depth)
		c.at = c.at[:len(c.at)-1]
	}
}

// walkValue checks a value inside a container at depth.
func (c *planChecker) walkValue(v *structpb.Value, depth int) {
	if hasUnknown(v) {
		c.unknown.add(c.parametersPath(), ruleUnknownFields, "value at %s has unknown fields", c.at)
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_NullValue, *structpb.Value_BoolValue:
		c.count(scalarBytes)
	case *structpb.Value_NumberValue:
		if math.IsNaN(k.NumberValue) || math.IsInf(k.NumberValue, 0) {
			c.params.add(c.parametersPath(), ruleValueFinite, "value at %s is %v, which JSON cannot represent", c.at, k.NumberValue)
		}
		c.count(scalarBytes)
	case *structpb.Value_StringValue:
		c.checkText(k.StringValue, "string", maxParameterStringBytes, ruleStringBytes)
	case *structpb.Value_StructValue:
		c.walkStruct(k.StructValue, depth+1)
	case *structpb.Value_ListValue:
		c.walkList(k.ListValue, depth+1)
	default:
		c.params.add(c.parametersPath(), ruleValueKind, "value at %s has no kind set, so it is not JSON", c.at)
	}
}

// checkText checks a key or string value at c.at and counts its bytes.
func (c *planChecker) checkText(s, what string, maxBytes int, ruleID string) {
	if len(s) > maxBytes {
		c.params.add(c.parametersPath(), ruleID, "%s at %s is %d bytes, more than %d", what, c.at, len(s), maxBytes)
	}
	if !utf8.ValidString(s) {
		c.params.add(c.parametersPath(), ruleValueUTF8, "%s at %s is not valid UTF-8", what, c.at)
	}
	c.count(len(s))
}

// count adds n bytes to the plan's total and reports, once, the step whose
// parameters take it over the limit.
func (c *planChecker) count(n int) {
	c.totalBytes += n
	if c.totalBytes > maxParameterTotalBytes && c.totalBytes-n <= maxParameterTotalBytes {
		c.params.add(c.parametersPath(), ruleTotalBytes,
			"parameters of steps 0 to %d hold more than %d bytes of keys and values", c.step, maxParameterTotalBytes)
	}
}

// path returns the field path plan.<elems>.
func (c *planChecker) path(elems ...*validate.FieldPathElement) *validate.FieldPath {
	return validate.FieldPath_builder{Elements: append([]*validate.FieldPathElement{fieldElem(c.planField)}, elems...)}.Build()
}

// parametersPath returns plan.steps[c.step].parameters, built once per step.
func (c *planChecker) parametersPath() *validate.FieldPath {
	if c.stepPath == nil {
		c.stepPath = c.path(indexElem(stepsField, c.step), fieldElem(parametersField))
	}
	return c.stepPath
}

func fieldElem(fd protoreflect.FieldDescriptor) *validate.FieldPathElement {
	return validate.FieldPathElement_builder{
		FieldNumber: new(int32(fd.Number())),
		FieldName:   new(string(fd.Name())),
		FieldType:   descriptorpb.FieldDescriptorProto_Type(fd.Kind()).Enum(),
	}.Build()
}

func indexElem(fd protoreflect.FieldDescriptor, i int) *validate.FieldPathElement {
	e := fieldElem(fd)
	e.SetIndex(uint64(i))
	return e
}

// hasUnknown reports whether m carried fields that its schema does not know.
// proto3 keeps them silently and protovalidate ignores them, but forwarding
// them would send Stage-3 something that was never validated.
func hasUnknown(m proto.Message) bool {
	return len(m.ProtoReflect().GetUnknown()) > 0
}

// segment is one step of a jsonPointer: an object key, or a list index when
// index >= 0.
type segment struct {
	key   string
	index int
}

// jsonPointer locates a value inside a step's parameters for messages; it is
// rendered only when a violation is reported.
type jsonPointer []segment

// String renders p as an RFC 6901 pointer, or "(top level)" when empty, cut
// to about maxPointerBytes so that a message cannot grow with the plan.
func (p jsonPointer) String() string {
	if len(p) == 0 {
		return "(top level)"
	}
	var b strings.Builder
	for _, s := range p {
		if b.Len() > maxPointerBytes {
			break
		}
		b.WriteByte('/')
		if s.index >= 0 {
			b.WriteString(strconv.Itoa(s.index))
		} else {
			b.WriteString(pointerEscaper.Replace(s.key[:min(len(s.key), maxPointerBytes)]))
		}
	}
	out := b.String()
	if len(out) <= maxPointerBytes {
		return out
	}
	cut := maxPointerBytes
	for cut > 0 && !utf8.RuneStart(out[cut]) {
		cut--
	}
	return out[:cut] + "..."
}
