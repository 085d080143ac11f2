// Package stage3ref is a reference Stage-3 executor, in the manner of
// net/http/httptest: a real gRPC server implementing stage3v1.Stage3ServiceServer
// that tests and `stage4 dev` run in-process.
//
// It behaves like a believable executor so that Stage-4 is tested against the
// contract rather than against a stub: it checks token_hash against user_id
// first, resolves every step's domain and method before running any, feeds
// outputs into later parameters as the data bindings say, and keeps its own
// audit trail, separate from Stage-4's. The domains are small and
// deterministic:
//
//	text: upper{text}, lower{text}, length{text}, concat{left, right}
//	math: add{a, b}, multiply{a, b}, sum{values}
//	json: get{object, key}, keys{object}, merge{base, patch}
//
// text methods output {"text"} (length outputs {"length"}), math methods
// {"result"}, json.get {"value"}, json.keys {"keys"} and json.merge {"object"}.
//
// DescribeMethods lists these domains and methods with their parameters and
// outputs as JSON Schemas (draft 2020-12). The parameter schemas require
// exactly the parameters above, with their types, and forbid any other:
// the executor ignores parameters its methods do not read, and the
// catalogue says so, so that Stage-4 refuses a misspelt one.
//
// Codes: PERMISSION_DENIED for a bad token, NOT_FOUND for an unknown domain or
// method, INVALID_ARGUMENT for bad parameters or binding indices,
// FAILED_PRECONDITION for a binding whose source output does not exist.
// Faults (SetFault) add denial, a failing step, delay and hang, so that every
// outcome Stage-4 must handle can be produced on demand.
package stage3ref
