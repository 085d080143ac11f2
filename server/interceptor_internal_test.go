package server

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBound(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		in            string
		chars         int
		want          string
		wantTruncated bool
	}{
		{name: "short", in: "abc", chars: 3, want: "abc"},
		{name: "cut by characters, not bytes", in: "ééééé", chars: 3, want: "ééé", wantTruncated: true},
		{name: "invalid UTF-8 replaced", in: "a\xffb", chars: 10, want: "a\uFFFDb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b bounder
			require.Equal(t, tt.want, b.bound(tt.in, tt.chars))
			require.Equal(t, tt.wantTruncated, b.truncated)
		})
	}
}
