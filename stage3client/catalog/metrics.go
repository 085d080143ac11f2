package catalog

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a Cache's Prometheus metrics.
type metrics struct {
	refreshes   *prometheus.CounterVec
	state       *prometheus.GaugeVec
	methods     prometheus.Gauge
	lastSuccess prometheus.Gauge
}

// statuses are every Status, for the state gauge's labels.
var statuses = []Status{StatusUnavailable, StatusNotOffered, StatusCurrent, StatusStale}

// Refresh results, as the refreshes counter labels them.
const (
	resultOK         = "ok"
	resultNotOffered = "not_offered"
	resultFailed     = "failed"
)

func newMetrics(r prometheus.Registerer, c *Cache) (*metrics, error) {
	m := &metrics{
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stage4_stage3_catalog_refreshes_total",
			Help: "DescribeMethods calls to Stage-3 by result: ok, not_offered (UNIMPLEMENTED) or failed (not reached, or an answer refused; the catalog held before is kept).",
		}, []string{"result"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "stage4_stage3_catalog_state",
			Help: "1 for the state of Stage-4's catalog of Stage-3's methods (unavailable, not_offered, current, stale), 0 for the others.",
		}, []string{"state"}),
		methods: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stage4_stage3_catalog_methods",
			Help: "Methods in the catalog that plans are checked against; 0 when there is none.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stage4_stage3_catalog_last_success_timestamp_seconds",
			Help: "Unix time at which Stage-3 last answered DescribeMethods with the catalog held; 0 when none is held.",
		}),
	}
	for _, res := range []string{resultOK, resultNotOffered, resultFailed} {
		m.refreshes.WithLabelValues(res)
	}
	for _, col := range []prometheus.Collector{m.refreshes, m.state, m.methods, m.lastSuccess} {
		if err := r.Register(col); err != nil {
			return nil, fmt.Errorf("register catalog metrics: %w", err)
		}
	}
	m.setState(c.Snapshot())
	return m, nil
}

// record counts a refresh that led to s.
func (m *metrics) record(s *Snapshot) {
	switch {
	case s.Err != nil:
		m.refreshes.WithLabelValues(resultFailed).Inc()
	case s.Status == StatusNotOffered:
		m.refreshes.WithLabelValues(resultNotOffered).Inc()
	default:
		m.refreshes.WithLabelValues(resultOK).Inc()
	}
	m.setState(s)
}

func (m *metrics) setState(s *Snapshot) {
	for _, st := range statuses {
		v := 0.0
		if st == s.Status {
			v = 1
		}
		m.state.WithLabelValues(st.String()).Set(v)
	}
	if s.Catalog == nil {
		m.methods.Set(0)
		m.lastSuccess.Set(0)
		return
	}
	m.methods.Set(float64(s.Catalog.Methods()))
	m.lastSuccess.Set(float64(s.FetchTime.UnixNano()) / 1e9)
}
