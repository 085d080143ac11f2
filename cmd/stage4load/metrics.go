package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// fsyncTotals are the sum (seconds) and count of stage4's audit fsyncs so
// far, from its stage4_audit_commit_duration_seconds histogram.
type fsyncTotals struct{ sum, count float64 }

const fsyncMetric = "stage4_audit_commit_duration_seconds"

// scrapeFsync reads stage4's fsync totals from its /metrics endpoint.
func scrapeFsync(ctx context.Context, url string) (fsyncTotals, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fsyncTotals{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fsyncTotals{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return fsyncTotals{}, fmt.Errorf("scrape %s: status %d: %v", url, resp.StatusCode, err)
	}
	return parseFsync(body)
}

// parseFsync finds the histogram's _sum and _count in the Prometheus text
// format; both must be there.
func parseFsync(body []byte) (fsyncTotals, error) {
	var t fsyncTotals
	var seen int
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		var dst *float64
		switch {
		case !ok:
			continue
		case name == fsyncMetric+"_sum":
			dst = &t.sum
		case name == fsyncMetric+"_count":
			dst = &t.count
		default:
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return t, fmt.Errorf("parse %s: %w", name, err)
		}
		*dst = v
		seen++
	}
	if seen != 2 {
		return t, fmt.Errorf("no %s histogram in the metrics", fsyncMetric)
	}
	return t, nil
}
