package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/server"
)

const validateUsage = `Usage: stage4 validate PLAN.json

Validates a plan offline, exactly as ExecutePlan and ValidatePlan would
without Stage-3's catalogue: offline, Stage-3's methods are unknown, so an
unknown method or parameter is not found here (ValidatePlan finds it when
Stage-3 describes its methods). The file holds a stage4.v1.Plan in protojson form, or a whole ExecutePlan or
ValidatePlan request body with the plan in its "plan" member (what grpcurl's
-d takes). "-" reads from stdin.

Prints "OK" and the plan_id for a valid plan; for an invalid one, "INVALID"
and one line per violation: its field path (relative to the plan), message
and rule.

Exit status:
  0  the plan is valid.
  1  the plan is invalid. That includes well-formed JSON that does not map
     onto a Plan, such as an unknown (or misspelt) field anywhere or a value
     of the wrong type: rejecting unknown fields is a validation rule.
  2  unusable input: a missing or unreadable file, text that is not JSON at
     all, or a wrong number of arguments.
`

// newValidateFlags declares validate's (empty) flag set, for -h.
func newValidateFlags() *flag.FlagSet {
	return newFlagSet("validate", validateUsage)
}

// runValidate is the validate command.
func runValidate(args []string, stdout, stderr io.Writer) error {
	fs := newValidateFlags()
	if err := parseFlags(fs, args, stderr, false); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return silentExit(exitUsage)
	}
	name := fs.Arg(0)
	data, err := readInput(name)
	if err != nil {
		return usageError("validate: %w", err)
	}
	// Tell "not JSON" (unusable input) from "JSON, but not a Plan" (an
	// invalid plan): protojson's errors do not say which.
	if !json.Valid(data) {
		if name == "-" {
			name = "stdin"
		}
		return usageError("validate: %s is not valid JSON", name)
	}
	plan, err := decodePlan(data)
	if err != nil {
		fmt.Fprintf(stdout, "INVALID\n  %v\n", err)
		return silentExit(exitFailure)
	}
	if err := server.Validate(&stage4v1.ValidatePlanRequest{Plan: plan}); err != nil {
		fmt.Fprint(stdout, "INVALID\n")
		for _, line := range violationLines(err) {
			fmt.Fprintf(stdout, "  %s\n", line)
		}
		return silentExit(exitFailure)
	}
	fmt.Fprintf(stdout, "OK %s\n", server.ContentDigest(plan))
	return nil
}

// decodePlan reads a Plan, or a request body that wraps one in "plan". A
// Plan has no field named plan, so the two forms cannot be mistaken for
// each other. The zero UnmarshalOptions reject unknown fields, in the
// request as in the plan, as rule 2 demands.
func decodePlan(data []byte) (*stage4v1.Plan, error) {
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) == nil {
		if _, wrapped := top["plan"]; wrapped {
			// ExecutePlanRequest and ValidatePlanRequest have the same JSON
			// form: one required "plan".
			req := &stage4v1.ExecutePlanRequest{}
			if err := protojson.Unmarshal(data, req); err != nil {
				return nil, err
			}
			return req.GetPlan(), nil // nil for "plan": null, which Validate reports
		}
	}
	plan := &stage4v1.Plan{}
	if err := protojson.Unmarshal(data, plan); err != nil {
		return nil, err
	}
	return plan, nil
}

// readInput reads the named file, or stdin for "-".
func readInput(name string) ([]byte, error) {
	if name == "-" {
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	return b, nil
}

// violationLines renders the buf.validate.Violations detail of a validation
// status as "field.path: message [rule_id]", or the status message when
// the error carries no violations.
func violationLines(err error) []string {
	var lines []string
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		vs, ok := d.(*validate.Violations)
		if !ok {
			continue
		}
		for _, v := range vs.GetViolations() {
			lines = append(lines, violationLine(v))
		}
	}
	if len(lines) == 0 {
		lines = append(lines, st.Message())
	}
	return lines
}

// violationLine renders one violation. Paths are made relative to the
// plan, the root of the file the user wrote, by dropping the request's
// "plan." prefix.
func violationLine(v *validate.Violation) string {
	field := strings.TrimPrefix(protovalidate.FieldPathString(v.GetField()), "plan.")
	if field == "" || field == "plan" {
		field = "(plan)"
	}
	return fmt.Sprintf("%s: %s [%s]", field, v.GetMessage(), v.GetRuleId())
}
