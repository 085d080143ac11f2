package server

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// TestValidateRequestID: request_id is optional; when set, protovalidate
// holds it to 1 to 64 characters of [A-Za-z0-9._:-] that start with a
// letter or digit.
func TestValidateRequestID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		id   string
		rule string // "" when valid
	}{
		{name: "empty: no idempotency", id: ""},
		{name: "a UUID", id: "0b6c5c1e-3f27-4c8e-9a51-1f0f3d5e9a77"},
		{name: "all allowed characters", id: "Az09._:-"},
		{name: "one character", id: "x"},
		{name: "64 characters", id: strings.Repeat("a", 64)},
		{name: "65 characters", id: strings.Repeat("a", 65), rule: "string.max_len"},
		{name: "starts with a dot", id: ".abc", rule: "string.pattern"},
		{name: "starts with a dash", id: "-abc", rule: "string.pattern"},
		{name: "a space", id: "a b", rule: "string.pattern"},
		{name: "a slash", id: "a/b", rule: "string.pattern"},
		{name: "non-ASCII", id: "é", rule: "string.pattern"},
		{name: "a newline at the end", id: "abc\n", rule: "string.pattern"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := Validate(&stage4v1.ExecutePlanRequest{Plan: validPlan(3), RequestId: tt.id})
			if tt.rule == "" {
				require.NoError(t, err)
				return
			}
			_, vs := requireInvalid(t, err)
			require.Equal(t, []violation{{"request_id", tt.rule}}, summarize(vs))
		})
	}
}
