package main

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
)

// TestScrapeFsync scrapes the histogram of a real audit log's commits from
// a /metrics page served as stage4 serves it, and pages without it.
func TestScrapeFsync(t *testing.T) {
	t.Parallel()
	withLog := prometheus.NewRegistry()
	store, err := segstore.Open(t.TempDir())
	require.NoError(t, err)
	log, err := audit.New(store, audit.WithRegisterer(withLog))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, log.Close()) })
	for _, ev := range fillEvents(0) {
		_, err := log.Append(t.Context(), ev)
		require.NoError(t, err)
	}
	var want fsyncTotals
	families, err := withLog.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == fsyncMetric {
			h := f.GetMetric()[0].GetHistogram()
			want = fsyncTotals{sum: h.GetSampleSum(), count: float64(h.GetSampleCount())}
		}
	}
	require.GreaterOrEqual(t, want.count, 1.0, "the appends were committed")

	tests := []struct {
		name    string
		handler http.Handler
		wantErr string
	}{
		{name: "stage4's audit metrics", handler: promhttp.HandlerFor(withLog, promhttp.HandlerOpts{})},
		{name: "no audit log", handler: promhttp.HandlerFor(prometheus.NewPedanticRegistry(), promhttp.HandlerOpts{}),
			wantErr: "no " + fsyncMetric + " histogram"},
		{name: "not the text format", handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(fsyncMetric + "_sum x\n"))
		}), wantErr: "text format parsing error"},
		{name: "error status", handler: http.NotFoundHandler(), wantErr: "404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			got, err := scrapeFsync(t.Context(), srv.URL+"/metrics")
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
	}
}
