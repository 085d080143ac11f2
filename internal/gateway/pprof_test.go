package gateway_test

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/internal/gateway"
	"github.com/stage4/stage4/stage3client"
)

// TestPprofOnlyWhenAsked checks that the runtime profiles are served on the
// metrics listener with Pprof, and not at all without it.
func TestPprofOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		on   bool
		want int
	}{
		{name: "off by default", on: false, want: http.StatusNotFound},
		{name: "on with pprof", on: true, want: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			gw := startGateway(t, gateway.Config{
				MetricsListen: "127.0.0.1:0",
				Pprof:         tt.on,
				// Never called: no plan is sent.
				Stage3: stage3client.Config{Target: "127.0.0.1:1", Insecure: true},
			})
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1"} {
				req, err := http.NewRequestWithContext(testContext(t), http.MethodGet, "http://"+gw.addrs.Metrics.String()+path, nil)
				require.NoError(t, err)
				res, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				require.Equal(t, tt.want, res.StatusCode, path)
			}
		})
	}
}

// TestPprofNeedsMetricsListener checks that Pprof without a metrics
// listener is a configuration error rather than silently nothing.
func TestPprofNeedsMetricsListener(t *testing.T) {
	t.Parallel()
	err := gateway.Run(t.Context(), gateway.Config{Pprof: true, Listen: "127.0.0.1:0"}, slog.New(slog.DiscardHandler), nil)
	require.True(t, errors.Is(err, gateway.ErrConfig), "got %v", err)
}
