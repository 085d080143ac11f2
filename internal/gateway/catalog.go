package gateway

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stage4/stage4/server"
	"github.com/stage4/stage4/stage3client/catalog"
)

// DefaultCatalogInterval is how often serve asks Stage-3 for its
// catalogue of methods (--stage3-catalog-interval).
const DefaultCatalogInterval = time.Minute

// startCatalog returns the validator of ExecutePlan and ValidatePlan. With
// a positive interval it holds Stage-3's catalogue: asked for once now
// (bounded by catalog.DefaultFetchTimeout, so that the first plans are
// checked when Stage-3 answers, and start-up is not held up for long when
// it does not), then every interval in the background until stop. Without
// one, plans are not checked against a catalogue. The catalogue package
// logs what it gets and counts it in reg.
func startCatalog(ctx context.Context, interval time.Duration, stage3 catalog.Describer, reg prometheus.Registerer, logger *slog.Logger) (v *server.Validator, stop func(), err error) {
	if interval <= 0 {
		logger.Info("stage3 catalog off; plans are not checked against one")
		return server.NewValidator(nil), func() {}, nil
	}
	cache, err := catalog.New(stage3, catalog.WithLogger(logger), catalog.WithRegisterer(reg))
	if err != nil {
		return nil, nil, err
	}
	_ = cache.Refresh(ctx) // a failure is logged, and retried by Run
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		cache.Run(runCtx, interval)
	}()
	return server.NewValidator(cache), func() { cancel(); <-done }, nil
}
