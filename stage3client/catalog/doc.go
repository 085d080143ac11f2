// Package catalog is Stage-4's view of the methods a Stage-3 offers: the
// answer of the optional stage3.v1.Stage3Service/DescribeMethods, checked
// against limits, its parameter schemas compiled once (Compile), and kept
// fresh by a Cache that asks again on an interval.
//
// # What a catalogue checks
//
// Catalog.Lookup says whether a step's domain and method exist;
// Method.Check holds a step's parameters to the method's JSON Schema. The
// parameters a data binding fills are not known before Stage-3 runs, so
// Check treats each as present with an unknown value: it counts for
// "required" (and dependentRequired, minProperties and maxProperties),
// and a schema that forbids a parameter of that name (additionalProperties
// or unevaluatedProperties false, or a false property schema) is reported
// against the binding. Nothing about its value is checked: failures at or
// below it are ignored, and so are anyOf, oneOf and not at the top of the
// parameters of a step with bindings, whose outcome may depend on it. An
// if/then/else that tests a bound parameter's value sees it as null.
//
// # Limits
//
// Stage-3 is trusted to execute plans, not to cost Stage-4 unbounded work,
// so a catalogue is taken whole or not at all, and only when it keeps
// within these limits: at most MaxBytes encoded and MaxMethods methods;
// domain and method names that a step can name (lowercase identifiers of
// at most 64 characters), distinct; schemas of at most MaxSchemaBytes and
// MaxSchemaDepth levels of nesting. References ($ref) may reach only the
// catalogue's own schemas: nothing is loaded from files or the network.
// $dynamicRef and $recursiveRef are refused, and a schema whose expansion
// (every $ref followed, a cycle at most MaxSchemaDepth+1 times, which is as
// deep as parameters can nest) has more than MaxSubschemas subschemas is
// refused, so that checking parameters costs at most MaxSubschemas
// subschemas per value. Patterns are Go regular expressions (RE2: linear
// time). A Cache also bounds the DescribeMethods call and the compilation
// in time (WithFetchTimeout, WithCompileTimeout).
//
// # States
//
// A Cache without a catalogue (Stage-3 not reached yet, or an answer that
// broke the limits) is StatusUnavailable; one whose Stage-3 answered
// UNIMPLEMENTED is StatusNotOffered, and drops any catalogue it held. A
// failed refresh keeps the last good catalogue (StatusStale) until a
// refresh succeeds or Stage-3 answers UNIMPLEMENTED: a stale catalogue can
// only refuse a method added since, which the state and the metrics show,
// while dropping it would silently stop the checks.
package catalog
