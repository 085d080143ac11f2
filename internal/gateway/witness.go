package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/internal/ratelog"
	"github.com/stage4/stage4/internal/witness"
)

// witnessWarnInterval bounds the WARN lines of one witness that does not
// cosign: it is asked again at every signing, about once a second.
const witnessWarnInterval = time.Minute

// cosigner is the audit log's audit.Cosigner: the witness policy's
// Cosigner, its outcomes turned into metrics and rate-limited WARN lines,
// and its errors into what the log branches on. A witness that is down,
// refuses or is misconfigured never stops Stage-4: it shows in
// stage4_witness_requests_total, in a WARN at most once a minute per
// witness, and in the age of the checkpoint GetCheckpoint serves
// (stage4_witness_cosigned_timestamp_seconds). A witness that holds a tree
// the checkpoint does not extend makes the log halt (ERROR, fail closed).
type cosigner struct {
	cs   *witness.Cosigner
	warn *ratelog.Logger

	requests      *prometheus.CounterVec
	cosignedSize  prometheus.Gauge
	cosignedAt    prometheus.Gauge
	quorumMissing prometheus.Counter
}

// newCosigner returns the cosigner of the witnesses of policy, whose
// consistency proofs read the stored hashes of the log that log returns
// (set once the log exists, before its first signing), with metrics
// registered in reg.
func newCosigner(policy *witness.Policy, log *atomic.Pointer[audit.Log], reg prometheus.Registerer, logger *slog.Logger) (*cosigner, error) {
	read := func(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
		lg := log.Load()
		if lg == nil {
			return nil, errors.New("the audit log is not open yet")
		}
		return lg.ReadHashes(ctx, indexes)
	}
	cs, err := witness.NewCosigner(policy, witness.HashProver(read))
	if err != nil {
		return nil, fmt.Errorf("%w: --witness-policy: %w", ErrConfig, err)
	}
	c := &cosigner{
		cs:   cs,
		warn: ratelog.New(logger, witnessWarnInterval),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "witness", Name: "requests_total",
			Help: "Requests to witnesses to cosign an audit checkpoint, by witness and outcome (cosigned, down, refused, misconfigured, inconsistent, error).",
		}, []string{"witness", "status"}),
		cosignedSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "stage4", Subsystem: "witness", Name: "cosigned_tree_size",
			Help: "Tree size of the latest audit checkpoint this process got cosigned by a quorum of witnesses.",
		}),
		cosignedAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "stage4", Subsystem: "witness", Name: "cosigned_timestamp_seconds",
			Help: "When this process last got an audit checkpoint cosigned by a quorum of witnesses (UNIX time); its age is how stale GetCheckpoint's answer may be.",
		}),
		quorumMissing: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "stage4", Subsystem: "witness", Name: "quorum_not_met_total",
			Help: "Audit checkpoints whose cosignatures did not meet the witness policy's quorum (GetCheckpoint keeps serving the previous cosigned one).",
		}),
	}
	for _, m := range []prometheus.Collector{c.requests, c.cosignedSize, c.cosignedAt, c.quorumMissing} {
		if err := reg.Register(m); err != nil {
			return nil, fmt.Errorf("register witness metrics: %w", err)
		}
	}
	for _, w := range policy.Witnesses() {
		for _, s := range []witness.Status{witness.StatusCosigned, witness.StatusDown, witness.StatusRefused, witness.StatusMisconfigured, witness.StatusInconsistent} {
			c.requests.WithLabelValues(w.Name, s.String())
		}
	}
	return c, nil
}

// Cosign implements audit.Cosigner.
func (c *cosigner) Cosign(ctx context.Context, checkpoint []byte) ([]byte, error) {
	res, err := c.cs.Cosign(ctx, checkpoint)
	var ahead *audit.WitnessAheadError
	inconsistent := false
	if res != nil {
		for _, o := range res.Outcomes {
			c.requests.WithLabelValues(o.Witness, o.Status.String()).Inc()
			var we *witness.Error
			switch {
			case o.Status == witness.StatusInconsistent && errors.As(o.Err, &we) && we.Ahead > 0:
				if ahead == nil || we.Ahead > ahead.Size {
					ahead = &audit.WitnessAheadError{Witness: o.Witness, Size: we.Ahead}
				}
			case o.Status == witness.StatusInconsistent:
				inconsistent = true
			case o.Err != nil:
				c.warn.LogKey(ctx, o.Witness, "a witness did not cosign the audit checkpoint; asking again at the next signing",
					"witness", o.Witness, "status", o.Status.String(), "error", o.Err.Error())
			}
		}
	}
	switch {
	case err == nil:
		c.cosignedAt.SetToCurrentTime()
		if cp, perr := audit.ParseCheckpoint(res.Checkpoint); perr == nil {
			c.cosignedSize.Set(float64(cp.Size))
		}
		return res.Checkpoint, nil
	case inconsistent:
		// The log halts on it and says so at ERROR.
		return nil, fmt.Errorf("%w: a witness holds a tree this log does not extend: %w", audit.ErrIntegrity, err)
	case ahead != nil:
		return nil, ahead
	case errors.Is(err, witness.ErrQuorumNotMet):
		c.quorumMissing.Inc()
		c.warn.Log(ctx, "the audit checkpoint did not meet the witness quorum; GetCheckpoint serves the previous cosigned one", "error", err.Error())
	}
	return nil, err
}
