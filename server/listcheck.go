package server

import (
	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/rpcerr"
)

// executionIDChars is the length of an execution id: 16 random bytes in
// lowercase hex, as the audit interceptor makes them.
const executionIDChars = 32

// checkListFilters refuses filters that can match no event because they
// cannot be what they filter on: a pasted placeholder or a cut-off id
// would otherwise list nothing and look like an execution without events.
func checkListFilters(req *stage4v1.ListAuditEventsRequest) error {
	if id := req.GetExecutionId(); id != "" && !isExecutionID(id) {
		fd := req.ProtoReflect().Descriptor().Fields().ByNumber(3)
		v := validate.Violation_builder{
			Field:  validate.FieldPath_builder{Elements: []*validate.FieldPathElement{fieldElem(fd)}}.Build(),
			RuleId: new("execution_id.format"),
			Message: new("is not an execution id: 32 lowercase hex digits, as ExecutePlan returns it " +
				"(executionId, and the x-stage4-execution-id header)"),
		}.Build()
		return violationsError(rpcerr.InvalidListRequest, []*validate.Violation{v}, 1)
	}
	return nil
}

// isExecutionID reports whether s has the form of an execution id.
func isExecutionID(s string) bool {
	if len(s) != executionIDChars {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
