package pgstore_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/pgstore"
	"github.com/stage4/stage4/internal/pgtest"
)

// TestAmbiguousCommit loses the connection during COMMIT, through a proxy
// that cuts it at the COMMIT message, in the three ways it can end: the
// commit landed, it did not, or the database cannot be asked. In every
// case the next Append extends the true head: no gap, duplicate or fork.
func TestAmbiguousCommit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		forward bool // the COMMIT reaches the server
		refuse  bool // and then the database cannot be reached to ask
		wantErr error
		stored  bool
	}{
		{name: "commit landed", forward: true, stored: true},
		{name: "commit lost", forward: false, wantErr: audit.ErrUnavailable},
		{name: "cannot tell", forward: true, refuse: true, wantErr: audit.ErrOutcomeUnknown, stored: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			url := pgtest.NewDatabase(t)
			proxy := pgtest.NewProxy(t, url)
			s := open(t, proxy.URL(url), pgstore.WithResolveTimeout(time.Second))
			before := mustAppend(t, s, event(received, "before", "u"))

			cut := proxy.CutAtNextCommit(tt.forward)
			if tt.refuse {
				// Existing connections go on; the store drops its idle
				// ones after the cut, so its questions need new ones.
				proxy.Refuse(true)
			}
			var recs []audit.Record
			err := s.Append(testCtx(t), true, renderer([]audit.Event{event(started, "during", "u")}, time.Time{}, &recs))
			<-cut
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
			}
			if tt.wantErr == audit.ErrUnavailable {
				require.NotErrorIs(t, err, audit.ErrOutcomeUnknown)
			}
			proxy.Refuse(false)

			// What the database holds, asked directly.
			n := query[int64](t, url, "SELECT count(*) FROM audit_records WHERE execution_id = 'during'")
			require.Equal(t, tt.stored, n == 1)

			after := mustAppend(t, s, event(completed, "after", "u"))
			want := before[0].Sequence + 1
			if tt.stored {
				want++
			}
			require.Equal(t, want, after[0].Sequence, "the next append extends the true head")
			res := mustVerify(t, url)
			require.Equal(t, want, res.Records)
		})
	}
}
