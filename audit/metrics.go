package audit

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	appends       prometheus.Counter
	failures      prometheus.Counter
	commitSeconds prometheus.Histogram
	batchSize     prometheus.Histogram
	late          prometheus.Gauge
	lateWritten   prometheus.Counter
	lateDropped   *prometheus.CounterVec
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
			Help: "Appends that returned an error, and executions refused before their first append while the store was unhealthy (Admit).",
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
		late: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "late_events",
			Help: "Terminal events waiting in memory for the audit store to be healthy again (see Log.AppendLater).",
		}),
		lateWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "late_events_written_total",
			Help: "Terminal events written late, once the audit store was healthy again.",
		}),
		lateDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "late_events_dropped_total",
			Help: "Late terminal events not written: full (past the bound, left to the sweep) or closed_elsewhere (a replica's sweep closed the execution first, or it was never stored).",
		}, []string{"reason"}),
		halted: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "stage4", Subsystem: "audit", Name: "halted",
			Help: "1 once the audit log found its store changed behind its back (a fork, a rollback, a witness's disagreement) and halted until a restart; else 0.",
		}),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	m.lateDropped.WithLabelValues("full")
	m.lateDropped.WithLabelValues("closed_elsewhere")
	for _, c := range []prometheus.Collector{m.appends, m.failures, m.commitSeconds, m.batchSize, m.late, m.lateWritten, m.lateDropped, m.halted} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
