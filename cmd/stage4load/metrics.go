package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// fsyncTotals are the sum (seconds) and count of stage4's audit fsyncs so
// far, from its stage4_audit_commit_duration_seconds histogram.
type fsyncTotals struct{ sum, count float64 }

const fsyncMetric = "stage4_audit_commit_duration_seconds"

// scrapeFsync reads stage4's fsync totals from its /metrics endpoint, which
// serves the Prometheus text format.
func scrapeFsync(ctx context.Context, url string) (fsyncTotals, error) {
	body, err := httpGet(ctx, url)
	if err != nil {
		return fsyncTotals{}, fmt.Errorf("scrape: %w", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return fsyncTotals{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	f := families[fsyncMetric]
	if f.GetType() != dto.MetricType_HISTOGRAM || len(f.GetMetric()) == 0 {
		return fsyncTotals{}, fmt.Errorf("scrape %s: no %s histogram in the metrics", url, fsyncMetric)
	}
	var t fsyncTotals
	for _, m := range f.GetMetric() {
		t.sum += m.GetHistogram().GetSampleSum()
		t.count += float64(m.GetHistogram().GetSampleCount())
	}
	return t, nil
}

// httpGet returns the body of url, which must answer 200 OK.
func httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return b, nil
}
