package gateway

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/stage3client"
)

// TestRequestRetention: the retention defaults to a day and must outlast
// any execution: its Stage-3 deadline and the margin for its terminal
// event.
func TestRequestRetention(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		retention time.Duration
		deadline  time.Duration
		want      time.Duration // 0: refused
	}{
		{name: "default", want: audit.DefaultRequestRetention},
		{name: "an hour", retention: time.Hour, want: time.Hour},
		{name: "shorter than an execution", retention: 40 * time.Second},
		{name: "as long as an execution", retention: stage3client.DefaultMaxDeadline + openForMargin},
		{name: "a long deadline needs a long retention", retention: time.Hour, deadline: 2 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := requestRetention(Config{IdempotencyRetention: tt.retention, Stage3: stage3client.Config{MaxDeadline: tt.deadline}})
			if tt.want == 0 {
				require.ErrorIs(t, err, ErrConfig)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}
