package audit

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	appends      prometheus.Counter
	failures     prometheus.Counter
	fsyncSeconds prometheus.Histogram
	batchSize    prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		appends: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "appends_total",
			Help: "Audit events written and fsynced.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "append_failures_total",
			Help: "Append calls that returned an error, including those refused by a failed log.",
		}),
		fsyncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "fsync_duration_seconds",
			Help:    "Duration of the fsync of one group commit.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "batch_size",
			Help:    "Events written by one group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.appends, m.failures, m.fsyncSeconds, m.batchSize} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
