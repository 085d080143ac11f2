package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
)

// cpNote is a well-formed checkpoint of size records whose signature the
// store does not check.
func cpNote(origin string, size uint64) []byte {
	return []byte(audit.FormatCheckpoint(origin, audit.TreeHead{Size: size}) + "\n\u2014 " + origin + " AAAAAA==\n")
}

// testCosignedIsKeptApart: the cosigned checkpoint is kept as the signed
// one is (the largest tree's, across restarts), and neither replaces the
// other.
func testCosignedIsKeptApart(t *testing.T, h Harness) {
	s := openStore(t, h)
	_, err := s.LoadCosigned(ctx(t))
	require.ErrorIs(t, err, audit.ErrNoCheckpoint)
	require.NoError(t, s.SaveCheckpoint(ctx(t), 9, cpNote("signed.example/log", 9)))
	require.NoError(t, s.SaveCosigned(ctx(t), 5, cpNote("cosigned.example/log", 5)))
	require.NoError(t, s.SaveCosigned(ctx(t), 4, cpNote("cosigned.example/log", 4)))
	s = restart(t, s, h)
	got, err := s.LoadCosigned(ctx(t))
	require.NoError(t, err)
	require.Equal(t, cpNote("cosigned.example/log", 5), got, "a smaller tree's cosigned checkpoint is not kept")
	got, err = s.LoadCheckpoint(ctx(t))
	require.NoError(t, err)
	require.Equal(t, cpNote("signed.example/log", 9), got, "the signed checkpoint is kept apart")
	require.NoError(t, s.SaveCosigned(ctx(t), 9, cpNote("cosigned.example/log", 9)))
	got, err = s.LoadCosigned(ctx(t))
	require.NoError(t, err)
	require.Equal(t, cpNote("cosigned.example/log", 9), got)
}

// testVerifierKeysArePinned: the pinned keys change only by a
// compare-and-swap against those pinned, survive a restart, and every
// replica sees the same.
func testVerifierKeysArePinned(t *testing.T, h Harness) {
	s := openStore(t, h)
	keys, err := s.VerifierKeys(ctx(t))
	require.NoError(t, err)
	require.Empty(t, keys, "nothing is pinned before the first signing")
	a, b, c := []string{"log.example+00000001+AQ"}, []string{"log.example+00000002+AQ"}, []string{"log.example+00000001+AQ", "log.example+00000002+AQ"}
	pinned, err := s.PinVerifierKeys(ctx(t), nil, a)
	require.NoError(t, err)
	require.Equal(t, a, pinned)
	pinned, err = s.PinVerifierKeys(ctx(t), nil, b)
	require.NoError(t, err)
	require.Equal(t, a, pinned, "a pin that expects none pinned does not replace one")
	pinned, err = s.PinVerifierKeys(ctx(t), b, b)
	require.NoError(t, err)
	require.Equal(t, a, pinned, "a pin that expects other keys does not replace them")
	pinned, err = s.PinVerifierKeys(ctx(t), a, c)
	require.NoError(t, err)
	require.Equal(t, c, pinned)
	s = restart(t, s, h)
	keys, err = s.VerifierKeys(ctx(t))
	require.NoError(t, err)
	require.Equal(t, c, keys)
	if h.OpenReplica != nil {
		r := h.OpenReplica(t, "other")
		t.Cleanup(func() { r.Close() })
		keys, err = r.VerifierKeys(ctx(t))
		require.NoError(t, err)
		require.Equal(t, c, keys, "every replica sees the pinned keys")
		pinned, err = r.PinVerifierKeys(ctx(t), c, b)
		require.NoError(t, err)
		require.Equal(t, b, pinned)
		keys, err = s.VerifierKeys(ctx(t))
		require.NoError(t, err)
		require.Equal(t, b, keys)
	}
}

// refusedAppend appends after the storage was changed: the store must
// refuse with ErrIntegrity, store nothing that a listing would return
// (a log directory finds the change once it wrote, and never publishes
// the batch), and Ping must fail likewise.
func refusedAppend(t *testing.T, s audit.Store) {
	t.Helper()
	err := s.Append(ctx(t), true, func(h audit.Head) ([]audit.Record, error) {
		return audit.RenderRecords(h, time.Now(), []audit.Event{event(received, "after", "p", "u")})
	})
	require.ErrorIs(t, err, audit.ErrIntegrity)
	require.ErrorIs(t, s.Ping(ctx(t)), audit.ErrIntegrity)
	page, err := s.List(ctx(t), audit.Query{Limit: 100, Filter: audit.Filter{ExecutionID: "after"}})
	if err == nil {
		require.Empty(t, page.Events, "nothing was stored on a changed head")
	}
}

// testRolledBackHeadIsRefused: records deleted from the end and the head
// moved back to an earlier record, under a running store, as an operator
// with write access could: the store does not append to the shortened log.
func testRolledBackHeadIsRefused(t *testing.T, h Harness) {
	need(t, "a rollback of its records", h.RollBack != nil)
	s := openStore(t, h)
	first := appendEvents(t, s, true, event(received, "a", "p", "u"), event(started, "a", "p", "u"))
	appendEvents(t, s, true, event(completed, "a", "p", "u"))
	appendEvents(t, s, true, event(received, "b", "p", "u"))
	h.RollBack(t, headAfter(t, first))
	refusedAppend(t, s)
}

// testBrokenHeadIsRefused: the stored head no longer names the last
// record (its hash set to garbage): the store does not append to it.
func testBrokenHeadIsRefused(t *testing.T, h Harness) {
	need(t, "a changed head", h.BreakHead != nil)
	s := openStore(t, h)
	appendEvents(t, s, true, event(received, "a", "p", "u"), event(started, "a", "p", "u"))
	h.BreakHead(t)
	refusedAppend(t, s)
}

// testListNeverSkipsADeletedRecord: a record deleted from the middle of
// the log fails the listings that would have skipped it, unfiltered or
// filtered to records that follow it, with ErrDataLoss.
func testListNeverSkipsADeletedRecord(t *testing.T, h Harness) {
	need(t, "a deleted record", h.DeleteRecord != nil)
	s := openStore(t, h)
	appendEvents(t, s, true, event(received, "a", "p", "u"), event(started, "a", "p", "u"))
	appendEvents(t, s, true, event(received, "b", "p", "u"), event(completed, "a", "p", "u"))
	appendEvents(t, s, true, event(started, "b", "p", "u"))
	h.DeleteRecord(t, 3) // b's PLAN_RECEIVED
	for _, q := range []audit.Query{
		{Limit: 100},
		{Limit: 100, Filter: audit.Filter{ExecutionID: "a"}}, // record 4 follows the deleted one
		{Limit: 1, Filter: audit.Filter{UserID: "u"}},        // paged
	} {
		var err error
		for range 100 {
			var page audit.Page
			page, err = s.List(ctx(t), q)
			if err != nil || page.Done() {
				break
			}
			q.From = page.Next
		}
		require.Truef(t, errors.Is(err, audit.ErrDataLoss), "a listing with filter %+v skipped the deleted record: %v", q.Filter, err)
	}
}
