package audit

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	appends       prometheus.Counter
	failures      prometheus.Counter
	commitSeconds prometheus.Histogram
	batchSize     prometheus.Histogram
	halted        prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		appends: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "appends_total",
			Help: "Audit events stored.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "append_failures_total",
			Help: "Append calls that returned an error, including those refused while the store was unhealthy.",
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "commit_duration_seconds",
			Help:    "Duration of one durable group commit in the audit store (a write and fsync, or a database transaction).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "batch_size",
			Help:    "Events stored by one group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		halted: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "halted",
			Help: "1 once the audit log found its store changed behind its back (a fork, a rollback, a witness's disagreement) and halted until a restart; else 0.",
		}),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.appends, m.failures, m.commitSeconds, m.batchSize, m.halted} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
