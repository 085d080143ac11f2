package segstore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/segstore"
	"github.com/stage4/stage4/internal/testkit"
)

const (
	received  = audit.PlanReceived
	started   = audit.ExecutionStarted
	completed = audit.ExecutionCompleted
	started_  = audit.ExecutionStarted
)

// small are the options of a log whose segments hold a few dozen records.
var small = []segstore.Option{segstore.WithSegmentBytes(segstore.MinSegmentBytes)}

func open(t *testing.T, dir string, opts ...segstore.Option) *segstore.Store {
	t.Helper()
	s, err := segstore.Open(dir, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// execute appends the three events of a completed execution, as the
// gateway does: PLAN_RECEIVED without a sync, the others durable.
func execute(t *testing.T, s *segstore.Store, n int) {
	t.Helper()
	id := fmt.Sprintf("exec-%05d", n)
	for i, typ := range []audit.EventType{received, started, completed} {
		appendEvent(t, s, i > 0, audit.Event{Type: typ, ExecutionID: id,
			PlanID: fmt.Sprintf("plan-%d", n%7), UserID: fmt.Sprintf("user-%d", n%3)})
	}
}

// writeLog writes n completed executions into a log in dir and closes
// it.
func writeLog(t *testing.T, dir string, n int, opts ...segstore.Option) {
	t.Helper()
	s := open(t, dir, opts...)
	for i := range n {
		execute(t, s, i)
	}
	require.NoError(t, s.Close())
}

func appendEvent(t *testing.T, s *segstore.Store, durable bool, ev audit.Event) {
	t.Helper()
	err := s.Append(context.Background(), durable, func(h audit.Head) ([]audit.Record, error) {
		return audit.RenderRecords(h, time.Now(), []audit.Event{ev})
	})
	require.NoError(t, err)
}

func list(t *testing.T, s *segstore.Store, q audit.Query) []audit.Event {
	t.Helper()
	q.Limit = max(q.Limit, 1)
	var all []audit.Event
	for range 100000 {
		page, err := s.List(context.Background(), q)
		require.NoError(t, err)
		all = append(all, page.Events...)
		if page.Done() {
			return all
		}
		q.From = page.Next
	}
	t.Fatal("listing did not end")
	return nil
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*"+segstore.SegmentExt))
	require.NoError(t, err)
	var out []string
	for _, n := range names {
		if _, ok := segstore.ParseSegmentName(filepath.Base(n)); ok {
			out = append(out, n)
		}
	}
	return out
}

// TestSegmentsChainAcrossAndOpenReadsOnlyTheActiveOne: a log of many
// segments is one chain, verifies as a directory, and a restart verifies
// only the records of the active segment.
func TestSegmentsChainAcrossAndOpenReadsOnlyTheActiveOne(t *testing.T) {
	t.Parallel()
	for _, prealloc := range []bool{true, false} {
		t.Run(fmt.Sprintf("preallocate=%v", prealloc), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			opts := append([]segstore.Option{segstore.WithPreallocate(prealloc)}, small...)
			s := open(t, dir, opts...)
			for i := range 100 {
				execute(t, s, i)
			}
			require.NoError(t, s.Close())
			segs := segments(t, dir)
			require.Greater(t, len(segs), 5)
			// Sealed segments hold their records only.
			for _, p := range segs[:len(segs)-1] {
				data, err := os.ReadFile(p)
				require.NoError(t, err)
				require.NotContains(t, string(data), "\x00")
				require.True(t, strings.HasSuffix(string(data), "}\n"))
			}

			res, err := segstore.VerifyDir(dir, nil)
			require.NoError(t, err)
			require.EqualValues(t, 300, res.Records)
			require.Equal(t, len(segs), res.Segments)
			require.Empty(t, res.Archived)

			s = open(t, dir, opts...)
			rec := s.Recovery()
			require.EqualValues(t, 300, rec.Records)
			require.Equal(t, len(segs)-1, rec.SealedSegments)
			require.Less(t, rec.VerifiedRecords, uint64(60), "Open verified more than the active segment")
			require.Zero(t, rec.TreeRebuilt)
			require.Len(t, list(t, s, audit.Query{Limit: 7}), 300)
			execute(t, s, 100)
			require.NoError(t, s.Close())
			res, err = segstore.VerifyDir(dir, nil)
			require.NoError(t, err)
			require.EqualValues(t, 303, res.Records)
		})
	}
}

// TestOpenTrustsSealedSegmentsAndVerifyDoesNot: a record changed inside
// a sealed segment (same length) does not slow or stop Open, which reads
// only the active segment; verify finds it. A change in the active
// segment is refused at Open.
func TestOpenTrustsSealedSegmentsAndVerifyDoesNot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeLog(t, dir, 60, small...)
	segs := segments(t, dir)
	flip := func(path string) {
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		i := strings.Index(string(data), "exec-")
		data[i+5] ^= 1
		require.NoError(t, os.WriteFile(path, data, 0o600))
	}
	flip(segs[1])
	_, err := segstore.VerifyDir(dir, nil)
	var ce *audit.ChainError
	require.ErrorAs(t, err, &ce)
	require.Contains(t, ce.Reason, filepath.Base(segs[1]))
	_, err = segstore.VerifySegment(segs[1])
	require.ErrorAs(t, err, &ce)

	s := open(t, dir, small...)
	require.NoError(t, s.Close())

	flip(segs[len(segs)-1])
	_, err = segstore.Open(dir, small...)
	require.ErrorAs(t, err, &ce)
}

// TestTornTailIsCleared: after a crash mid-write, the bytes of a record
// never acknowledged are cleared (and stray bytes of an unsynced batch
// past them), and the log goes on.
func TestTornTailIsCleared(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir)
	for i := range 5 {
		execute(t, s, i)
	}
	require.NoError(t, s.Close())
	seg := segments(t, dir)[0]
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	require.NoError(t, err)
	res, err := segstore.VerifySegment(seg)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte(`{"sequence":16,"ty`), res.Bytes)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte(`"stray":1}`+"\n"), res.Bytes+4096)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	s = open(t, dir)
	require.EqualValues(t, 18, s.Recovery().TruncatedBytes)
	execute(t, s, 5)
	require.NoError(t, s.Close())
	v, err := segstore.VerifyDir(dir, nil)
	require.NoError(t, err)
	require.EqualValues(t, 18, v.Records)
	require.Zero(t, v.TrailingBytes)
}

// TestArchivedSegments: sealed segments moved out of the directory are
// tolerated by Open, skipped by listings and reported by verify, which
// still checks every segment left and the archived ones on their own.
func TestArchivedSegments(t *testing.T) {
	t.Parallel()
	dir, archive := t.TempDir(), t.TempDir()
	writeLog(t, dir, 60, small...)
	segs := segments(t, dir)
	moved := segs[:2]
	for _, p := range moved {
		require.NoError(t, os.Rename(p, filepath.Join(archive, filepath.Base(p))))
	}

	res, err := segstore.VerifyDir(dir, nil)
	require.NoError(t, err)
	require.EqualValues(t, 180, res.Records)
	require.Len(t, res.Archived, 2)
	first, _ := segstore.ParseSegmentName(filepath.Base(segs[2]))
	require.Equal(t, first-1, res.Archived[1].Last)

	s := open(t, dir, small...)
	require.Equal(t, 2, s.Recovery().ArchivedSegments)
	all := list(t, s, audit.Query{Limit: 50})
	require.Len(t, all, 180-int(first-1))
	require.Equal(t, first, all[0].Sequence)
	require.Empty(t, list(t, s, audit.Query{Limit: 10, Filter: audit.Filter{ExecutionID: "exec-00000"}}))
	require.NoError(t, s.Close())

	for _, p := range moved {
		r, err := segstore.VerifySegment(filepath.Join(archive, filepath.Base(p)))
		require.NoError(t, err)
		require.False(t, r.Sealed)
	}
	// Beside a copy of the seal file, a segment is checked against its seal.
	data, err := os.ReadFile(filepath.Join(dir, segstore.SealsFile))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(archive, segstore.SealsFile), data, 0o600))
	r, err := segstore.VerifySegment(filepath.Join(archive, filepath.Base(moved[1])))
	require.NoError(t, err)
	require.True(t, r.Sealed)
}

// TestLookupsThroughTheIndex: filtered listings find the records of every
// segment through the index, also after the index was removed (it is
// rebuilt), and match a full scan.
func TestLookupsThroughTheIndex(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir, small...)
	for i := range 120 {
		execute(t, s, i)
	}
	check := func(s *segstore.Store) {
		t.Helper()
		for _, f := range []audit.Filter{
			{ExecutionID: "exec-00007"},
			{ExecutionID: "exec-00119", Type: completed},
			{PlanID: "plan-3"},
			{UserID: "user-1", Type: started},
			{Type: received},
			{ExecutionID: "exec-99999"},
		} {
			want := 0
			for _, ev := range list(t, s, audit.Query{Limit: 100}) {
				if f.Matches(&ev) {
					want++
				}
			}
			got := list(t, s, audit.Query{Filter: f, Limit: 4})
			require.Len(t, got, want, "%+v", f)
			for i, ev := range got {
				require.True(t, f.Matches(&ev))
				if i > 0 {
					require.Greater(t, ev.Sequence, got[i-1].Sequence)
				}
			}
		}
	}
	check(s)
	require.NoError(t, s.Close())
	require.NoError(t, os.RemoveAll(filepath.Join(dir, segstore.IndexDir)))
	s = open(t, dir, small...)
	require.Positive(t, s.Recovery().IndexRebuilds)
	check(s)
}

// TestChangedSegmentFailsTheStore: an active segment removed or cut while
// in use fails the next append for good, as a data loss.
func TestChangedSegmentFailsTheStore(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(path string) error
	}{
		{"removed", os.Remove},
		{"truncated", func(p string) error { return os.Truncate(p, 10) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := open(t, dir)
			execute(t, s, 0)
			require.NoError(t, tc.change(segments(t, dir)[0]))
			err := s.Append(context.Background(), true, func(h audit.Head) ([]audit.Record, error) {
				return audit.RenderRecords(h, time.Now(), []audit.Event{{Type: received, ExecutionID: "x"}})
			})
			require.ErrorIs(t, err, audit.ErrDataLoss)
			require.ErrorIs(t, s.Ping(context.Background()), audit.ErrDataLoss)
		})
	}
}

// TestLostLogIsRefused: a directory whose segments are gone while its head
// file remains is refused, unless a new log is asked for.
func TestLostLogIsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeLog(t, dir, 30, small...)
	for _, p := range segments(t, dir) {
		require.NoError(t, os.Remove(p))
	}
	require.NoError(t, os.Remove(filepath.Join(dir, segstore.SealsFile)))
	_, err := segstore.Open(dir, small...)
	require.ErrorIs(t, err, segstore.ErrHeadMismatch)

	s := open(t, dir, append(small, segstore.WithNewLog())...)
	require.NotEmpty(t, s.Recovery().OldHeadFile)
	execute(t, s, 0)
}

// TestSecondProcessIsLockedOut: one process per directory.
func TestSecondProcessIsLockedOut(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	open(t, dir)
	_, err := segstore.Open(dir)
	require.ErrorIs(t, err, segstore.ErrLocked)
}

// TestFullDiskRefusesThenRecovers: when the disk is full, the next segment
// cannot be made: the batch is refused as unavailable with nothing
// written, and once space is freed the store appends again without a
// restart; the log stays one intact chain.
func TestFullDiskRefusesThenRecovers(t *testing.T) {
	t.Parallel()
	disk := testkit.SmallDisk(t, 1<<20)
	// Ballast that fills the disk after the log's first segments.
	ballast := filepath.Join(disk, "ballast")
	require.NoError(t, os.WriteFile(ballast, make([]byte, 700<<10), 0o600))
	dir := filepath.Join(disk, "log")
	s := open(t, dir, segstore.WithSegmentBytes(64<<10))
	var err error
	n := 0
	for ; n < 10000; n++ {
		err = s.Append(context.Background(), true, func(h audit.Head) ([]audit.Record, error) {
			return audit.RenderRecords(h, time.Now(), []audit.Event{{Type: received, ExecutionID: fmt.Sprintf("exec-%05d", n)}})
		})
		if err != nil {
			break
		}
	}
	require.ErrorIs(t, err, audit.ErrUnavailable, "after %d records", n)
	require.NotErrorIs(t, err, audit.ErrDataLoss)
	require.NoError(t, s.Err(), "a full disk must not fail the store for good")
	require.Error(t, s.Ping(context.Background()))
	// The segment's reserve still takes the terminal events of running
	// executions, and nothing else.
	appendEvent(t, s, true, audit.Event{Type: completed, ExecutionID: "exec-00000"})
	n++
	err = s.Append(context.Background(), true, func(h audit.Head) ([]audit.Record, error) {
		return audit.RenderRecords(h, time.Now(), []audit.Event{{Type: received, ExecutionID: "refused"}})
	})
	require.ErrorIs(t, err, audit.ErrUnavailable)

	require.NoError(t, os.Remove(ballast))
	require.NoError(t, s.Ping(context.Background()))
	appendEvent(t, s, true, audit.Event{Type: received, ExecutionID: "after"})
	require.NoError(t, s.Close())
	res, err := segstore.VerifyDir(dir, nil)
	require.NoError(t, err)
	require.EqualValues(t, n+1, res.Records)
}

// TestVerifyDirNoticesALostEnd: records lost off the end of the log (the
// active segment removed) are found by verify through the head file, and
// Open refuses the directory without changing it, so that the operator
// can still put the segment back.
func TestVerifyDirNoticesALostEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeLog(t, dir, 20, small...)
	segs := segments(t, dir)
	active := segs[len(segs)-1]
	require.NoError(t, os.Rename(active, filepath.Join(t.TempDir(), "kept")))

	_, err := segstore.VerifyDir(dir, nil)
	var ce *audit.ChainError
	require.ErrorAs(t, err, &ce)
	require.Contains(t, ce.Reason, "head file names record 60")

	_, err = segstore.Open(dir, small...)
	require.ErrorIs(t, err, segstore.ErrHeadMismatch)
	_, statErr := os.Stat(active)
	require.ErrorIs(t, statErr, os.ErrNotExist, "a refused Open made a segment in the lost one's place")
}

// TestVerifyRefusesWhatIsNotALog: a directory without a log, a damaged
// first record of a segment and an unreadable seal file are reported, not
// passed as an empty or unsealed log.
func TestVerifyRefusesWhatIsNotALog(t *testing.T) {
	t.Parallel()
	_, err := segstore.VerifyDir(t.TempDir(), nil)
	require.ErrorContains(t, err, "holds no audit log")

	dir := t.TempDir()
	writeLog(t, dir, 20, small...)
	seg := segments(t, dir)[1]
	data, err := os.ReadFile(seg)
	require.NoError(t, err)
	data[strings.Index(string(data), "exec-")+5] ^= 1 // in the first record
	require.NoError(t, os.WriteFile(seg, data, 0o600))
	first, _ := segstore.ParseSegmentName(filepath.Base(seg))
	_, err = segstore.VerifySegment(seg)
	var ce *audit.ChainError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, first, ce.Sequence)
	require.NotContains(t, ce.Reason, "changed under the server")

	require.NoError(t, os.WriteFile(filepath.Join(dir, segstore.SealsFile), []byte("garbage\n"), 0o600))
	_, err = segstore.VerifySegment(segments(t, dir)[0])
	require.ErrorContains(t, err, "seal file")
}

// TestFullDiskLogCompletesRunningExecutions: through audit.Log, once the
// disk is full new executions are refused while the terminal events of
// running ones still land in the segment's reserve, also in batches that
// mixed both and while the log reports itself unhealthy.
func TestFullDiskLogCompletesRunningExecutions(t *testing.T) {
	t.Parallel()
	disk := testkit.SmallDisk(t, 1<<20)
	require.NoError(t, os.WriteFile(filepath.Join(disk, "ballast"), make([]byte, 700<<10), 0o600))
	dir := filepath.Join(disk, "log")
	store, err := segstore.Open(dir, segstore.WithSegmentBytes(64<<10))
	require.NoError(t, err)
	lg, err := audit.New(store)
	require.NoError(t, err)
	t.Cleanup(func() { lg.Close() })
	ctx := context.Background()
	// Executions run eight at a time, until the disk refuses a new one.
	var running []string
	n := 0
	for ; ; n++ {
		require.Less(t, n, 10000)
		id := fmt.Sprintf("exec-%05d", n)
		if _, err := lg.Append(ctx, audit.Event{Type: started_, ExecutionID: id}); err != nil {
			require.ErrorIs(t, err, audit.ErrUnavailable)
			break
		}
		running = append(running, id)
		if len(running) < 8 {
			continue
		}
		for _, id := range running {
			_, err := lg.Append(ctx, audit.Event{Type: completed, ExecutionID: id})
			require.NoError(t, err)
		}
		running = nil
	}
	require.Error(t, lg.Err(), "unhealthy while the next segment cannot be made")
	var wg sync.WaitGroup
	for i, id := range running {
		wg.Go(func() {
			_, err := lg.Append(ctx, audit.Event{Type: completed, ExecutionID: id})
			assert.NoError(t, err, "running execution %s", id)
		})
		wg.Go(func() {
			_, err := lg.Append(ctx, audit.Event{Type: started_, ExecutionID: fmt.Sprintf("new-%05d", i)})
			assert.ErrorIs(t, err, audit.ErrUnavailable)
		})
	}
	wg.Wait()
	require.NoError(t, lg.Close())
	res, err := segstore.VerifyDir(dir, nil)
	require.NoError(t, err)
	require.EqualValues(t, 2*n, res.Records)
}

// TestZeroBytesInValuesSurviveARestart: the end of a preallocated
// segment's records is its first zero byte, which no record holds: a
// value with NUL characters is escaped, and the log reopens whole.
func TestZeroBytesInValuesSurviveARestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir)
	ev := audit.Event{Type: received, ExecutionID: "nul", UserID: "a\x00b"}
	appendEvent(t, s, true, ev)
	execute(t, s, 1)
	require.NoError(t, s.Close())
	s = open(t, dir)
	require.EqualValues(t, 4, s.Recovery().Records)
	got := list(t, s, audit.Query{Limit: 10, Filter: audit.Filter{UserID: "a\x00b"}})
	require.Len(t, got, 1)
	require.Equal(t, "a\x00b", got[0].UserID)
}

// TestListingsDuringSeals: while executions are written into segments so
// small that seals follow each other, index runs are written and merged,
// every execution already durable is found whole by its id.
func TestListingsDuringSeals(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), small...)
	var done atomic.Int64 // executions 0..done-1 are durable
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(stop)
		for i := range 400 {
			execute(t, s, i)
			done.Store(int64(i + 1))
		}
	})
	for r := range 2 {
		wg.Go(func() {
			for k := r; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				n := done.Load()
				if n == 0 {
					continue
				}
				id := fmt.Sprintf("exec-%05d", int64(k*7919)%n)
				page, err := s.List(context.Background(), audit.Query{Filter: audit.Filter{ExecutionID: id}, Limit: 10})
				if !assert.NoError(t, err) || !assert.Len(t, page.Events, 3, "execution %s of %d durable", id, n) {
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestInterruptedAcrossSeals: executions left open in segments sealed
// long before the stop are still handed out for closing, in the order of
// their first event, although Open reads only the active segment: the
// seals carry them.
func TestInterruptedAcrossSeals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir, small...)
	appendEvent(t, s, false, audit.Event{Type: received, ExecutionID: "open-1"})
	appendEvent(t, s, true, audit.Event{Type: started_, ExecutionID: "open-1"})
	for i := range 30 {
		execute(t, s, i)
	}
	appendEvent(t, s, true, audit.Event{Type: received, ExecutionID: "open-2"})
	for i := 30; i < 60; i++ {
		execute(t, s, i)
	}
	require.NoError(t, s.Close())

	s = open(t, dir, small...)
	require.Greater(t, s.Recovery().SealedSegments, 3)
	left, err := s.Interrupted(context.Background())
	require.NoError(t, err)
	require.Len(t, left, 2)
	require.Equal(t, "open-1", left[0].ExecutionID)
	require.Equal(t, started_, left[0].LastType)
	require.EqualValues(t, 1, left[0].Sequence)
	require.Equal(t, "open-2", left[1].ExecutionID)
	require.Equal(t, received, left[1].LastType)
	again, err := s.Interrupted(context.Background())
	require.NoError(t, err)
	require.Empty(t, again, "handed out once")
}

// TestVerifyDirInParallel: sealed segments verified in parallel (without
// callbacks) give what verifying them in order gives, intact or damaged:
// the first damage in log order.
func TestVerifyDirInParallel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeLog(t, dir, 60, small...)
	inOrder := audit.WithLineFunc(func(uint64, []byte) {}) // a callback: in log order
	check := func() {
		t.Helper()
		par, perr := segstore.VerifyDir(dir, nil)
		seq, serr := segstore.VerifyDir(dir, nil, inOrder)
		require.Equal(t, seq.Records, par.Records)
		require.Equal(t, seq.LastHash, par.LastHash)
		require.Equal(t, seq.Segments, par.Segments)
		require.Equal(t, serr, perr)
	}
	check()
	segs := segments(t, dir)
	require.Greater(t, len(segs), 6)
	for _, p := range []string{segs[5], segs[2]} { // a later damage, then an earlier one
		data, err := os.ReadFile(p)
		require.NoError(t, err)
		data[strings.LastIndex(string(data), "exec-")+5] ^= 1
		require.NoError(t, os.WriteFile(p, data, 0o600))
		check()
	}
	_, err := segstore.VerifyDir(dir, nil)
	var ce *audit.ChainError
	require.ErrorAs(t, err, &ce)
	first, _ := segstore.ParseSegmentName(filepath.Base(segs[2]))
	require.Greater(t, ce.Sequence, first, "the damage in segment 3, not the later one")
	require.Contains(t, ce.Reason, filepath.Base(segs[2]))
}
