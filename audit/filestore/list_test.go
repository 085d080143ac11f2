package filestore_test

import (
	"context"
	"encoding/base64"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// listFixture writes nine events: three executions of two users.
func listFixture(t *testing.T) *testLog {
	t.Helper()
	lg := openLog(t, logPath(t))
	mustAppend(t, lg,
		event(received, "e1", "alice"), event(started, "e1", "alice"), event(completed, "e1", "alice"),
		event(received, "e2", "bob"), event(failed, "e2", "bob"),
		event(received, "e3", "alice"), event(started, "e3", "alice"), event(failed, "e3", "alice"),
		event(received, `e"4`, "bob"),
	)
	return lg
}

func sequences(evs []*stage4v1.AuditEvent) []uint64 {
	seqs := []uint64{}
	for _, ev := range evs {
		seqs = append(seqs, ev.GetSequence())
	}
	return seqs
}

func TestListFilters(t *testing.T) {
	t.Parallel()
	lg := listFixture(t)
	tests := []struct {
		name string
		req  *stage4v1.ListAuditEventsRequest
		want []uint64
	}{
		{name: "everything", req: &stage4v1.ListAuditEventsRequest{}, want: []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{name: "execution", req: &stage4v1.ListAuditEventsRequest{ExecutionId: "e3"}, want: []uint64{6, 7, 8}},
		{name: "execution id needing escapes", req: &stage4v1.ListAuditEventsRequest{ExecutionId: `e"4`}, want: []uint64{9}},
		{name: "user", req: &stage4v1.ListAuditEventsRequest{UserId: "bob"}, want: []uint64{4, 5, 9}},
		{name: "plan", req: &stage4v1.ListAuditEventsRequest{PlanId: "sha256:plan-of-alice"}, want: []uint64{1, 2, 3, 6, 7, 8}},
		{name: "type", req: &stage4v1.ListAuditEventsRequest{Type: failed}, want: []uint64{5, 8}},
		{name: "user and type", req: &stage4v1.ListAuditEventsRequest{UserId: "alice", Type: failed}, want: []uint64{8}},
		{name: "user and other user's execution", req: &stage4v1.ListAuditEventsRequest{UserId: "alice", ExecutionId: "e2"}, want: []uint64{}},
		{name: "prefix is no match", req: &stage4v1.ListAuditEventsRequest{UserId: "ali"}, want: []uint64{}},
		{name: "invalid UTF-8 matches nothing", req: &stage4v1.ListAuditEventsRequest{UserId: "\xff"}, want: []uint64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, sequences(listAll(t, lg, tt.req)))
		})
	}
}

func TestListPagesThroughEverything(t *testing.T) {
	t.Parallel()
	lg := listFixture(t)
	tests := []struct {
		name      string
		req       *stage4v1.ListAuditEventsRequest
		wantPages int
	}{
		{name: "one per page", req: &stage4v1.ListAuditEventsRequest{PageSize: 1}, wantPages: 9},
		{name: "two per page", req: &stage4v1.ListAuditEventsRequest{PageSize: 2}, wantPages: 5},
		{name: "exact fit ends without token", req: &stage4v1.ListAuditEventsRequest{PageSize: 3}, wantPages: 3},
		{name: "default size", req: &stage4v1.ListAuditEventsRequest{}, wantPages: 1},
		// The third page ends at sequence 8 with bob's event 9 after it, so
		// a token is issued and the fourth page is empty.
		{name: "filtered", req: &stage4v1.ListAuditEventsRequest{PageSize: 2, UserId: "alice"}, wantPages: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			all, err := lg.List(context.Background(), &stage4v1.ListAuditEventsRequest{PageSize: 1000, UserId: tt.req.GetUserId()})
			require.NoError(t, err)
			require.Empty(t, all.GetNextPageToken())
			var got []*stage4v1.AuditEvent
			pages := 0
			for {
				resp, err := lg.List(context.Background(), tt.req)
				require.NoError(t, err)
				pages++
				if tt.req.GetPageSize() > 0 {
					require.LessOrEqual(t, len(resp.GetAuditEvents()), int(tt.req.GetPageSize()))
				}
				got = append(got, resp.GetAuditEvents()...)
				if resp.GetNextPageToken() == "" {
					break
				}
				tt.req.PageToken = resp.GetNextPageToken()
			}
			require.Equal(t, tt.wantPages, pages)
			requireEvents(t, all.GetAuditEvents(), got)
		})
	}
}

func TestListTokenSeesLaterEvents(t *testing.T) {
	t.Parallel()
	lg := listFixture(t)
	resp, err := lg.List(context.Background(), &stage4v1.ListAuditEventsRequest{PageSize: 8})
	require.NoError(t, err)
	require.NotEmpty(t, resp.GetNextPageToken())
	mustAppend(t, lg, event(failed, `e"4`, "bob"))
	resp, err = lg.List(context.Background(), &stage4v1.ListAuditEventsRequest{PageSize: 8, PageToken: resp.GetNextPageToken()})
	require.NoError(t, err)
	require.Equal(t, []uint64{9, 10}, sequences(resp.GetAuditEvents()))
}

func TestListRefusesBadRequests(t *testing.T) {
	t.Parallel()
	lg := listFixture(t)
	first, err := lg.List(context.Background(), &stage4v1.ListAuditEventsRequest{PageSize: 2})
	require.NoError(t, err)
	token := first.GetNextPageToken()
	raw, err := base64.RawURLEncoding.DecodeString(token)
	require.NoError(t, err)
	forge := func(edit func(b []byte)) string {
		b := append([]byte(nil), raw...)
		edit(b)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	tests := []struct {
		name   string
		req    *stage4v1.ListAuditEventsRequest
		reason error
	}{
		{name: "negative page size", req: &stage4v1.ListAuditEventsRequest{PageSize: -1}, reason: audit.ErrInvalidQuery},
		{name: "page size over 1000", req: &stage4v1.ListAuditEventsRequest{PageSize: 1001}, reason: audit.ErrInvalidQuery},
		{name: "undefined type", req: &stage4v1.ListAuditEventsRequest{Type: 42}, reason: audit.ErrInvalidQuery},
		{name: "not base64", req: &stage4v1.ListAuditEventsRequest{PageToken: "!!!"}, reason: audit.ErrInvalidPageToken},
		{name: "wrong length", req: &stage4v1.ListAuditEventsRequest{PageToken: token + "AA"}, reason: audit.ErrInvalidPageToken},
		{name: "other filters", req: &stage4v1.ListAuditEventsRequest{PageToken: token, UserId: "alice"}, reason: audit.ErrInvalidPageToken},
		{name: "other type", req: &stage4v1.ListAuditEventsRequest{PageToken: token, Type: received}, reason: audit.ErrInvalidPageToken},
		{name: "offset inside a record", req: &stage4v1.ListAuditEventsRequest{PageToken: forge(func(b []byte) { b[8] += 5 })}, reason: audit.ErrInvalidPageToken},
		{name: "offset past the end", req: &stage4v1.ListAuditEventsRequest{PageToken: forge(func(b []byte) { b[2] = 0x7f })}, reason: audit.ErrInvalidPageToken},
		{name: "sequence of another record", req: &stage4v1.ListAuditEventsRequest{PageToken: forge(func(b []byte) { b[16]++ })}, reason: audit.ErrInvalidPageToken},
		{name: "unknown version", req: &stage4v1.ListAuditEventsRequest{PageToken: forge(func(b []byte) { b[0] = 9 })}, reason: audit.ErrInvalidPageToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := lg.List(context.Background(), tt.req)
			require.ErrorIs(t, err, tt.reason)
		})
	}
}

func TestListAfterCloseIsUnavailable(t *testing.T) {
	t.Parallel()
	lg := listFixture(t)
	require.NoError(t, lg.Close())
	_, err := lg.List(context.Background(), &stage4v1.ListAuditEventsRequest{})
	require.ErrorIs(t, err, audit.ErrClosed)
}
