package audit

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// gatedStore holds every durable Append until release is closed, so a test
// can queue appends behind a commit in progress; the held Append then
// fails with err.
type gatedStore struct {
	Store
	inCommit chan struct{}
	release  chan struct{}
	err      error
	appends  atomic.Int32
	once     sync.Once
	head     Head
}

func (g *gatedStore) Append(_ context.Context, _ bool, build func(Head) ([]Record, error)) error {
	g.appends.Add(1)
	g.once.Do(func() { close(g.inCommit) })
	<-g.release
	if g.err != nil {
		return g.err
	}
	recs, err := build(g.head)
	if err != nil {
		return err
	}
	tree, err := NextTree(g.head, recs)
	if err != nil {
		return err
	}
	g.head = Head{Sequence: recs[len(recs)-1].Sequence, Hash: recs[len(recs)-1].Hash, Tree: tree}
	return nil
}

func (g *gatedStore) Interrupted(context.Context) ([]OpenExecution, error) { return nil, nil }
func (g *gatedStore) Ping(context.Context) error                           { return nil }
func (g *gatedStore) FingerprintKey(context.Context) ([]byte, error)       { return make([]byte, 32), nil }
func (g *gatedStore) Close() error                                         { return nil }

func TestGroupCommit(t *testing.T) {
	t.Parallel()
	errDisk := errors.New("disk gone")
	tests := []struct {
		name    string
		err     error
		appends int32 // store batches by the end
	}{
		{name: "queued appends share one batch", appends: 2},
		{name: "queued appends fail with the batch before them", err: errDisk, appends: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := &gatedStore{inCommit: make(chan struct{}), release: make(chan struct{}), err: tt.err}
			lg, err := New(g)
			require.NoError(t, err)
			t.Cleanup(func() { lg.Close() })

			ev := Event{Type: PlanReceived, ExecutionID: "e"}
			var wg sync.WaitGroup
			appendOne := func() {
				if _, err := lg.Append(context.Background(), ev); !errors.Is(err, tt.err) {
					t.Errorf("Append: %v, want %v", err, tt.err)
				}
			}
			wg.Go(appendOne)
			<-g.inCommit // the first batch is being committed
			const queued = 10
			for range queued {
				wg.Go(appendOne)
			}
			for len(lg.writer.requests) < queued {
				runtime.Gosched()
			}
			close(g.release)
			wg.Wait()
			require.Equal(t, tt.appends, g.appends.Load())
			if tt.err == nil {
				require.Equal(t, uint64(1+queued), g.head.Sequence)
			}
		})
	}
}
