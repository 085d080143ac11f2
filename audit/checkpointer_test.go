package audit_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
)

// The checkpointer's accountability: it never signs a tree that does not
// extend what this process or the store signed, checked at every signing;
// it keeps one signing identity per store; and with witnesses it serves
// only cosigned checkpoints.

// newSigningKey makes a signing key named name, with its verifier.
func newSigningKey(t *testing.T, name string) (audit.SigningKey, note.Verifier) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	require.NoError(t, err)
	k, err := audit.ParseSigningKey(skey)
	require.NoError(t, err)
	require.Equal(t, vkey, k.VerifierKey, "the verifier key is derived from the private key")
	v, err := note.NewVerifier(vkey)
	require.NoError(t, err)
	return k, v
}

// appendN appends n PLAN_RECEIVED events of execution exec.
func appendN(t *testing.T, lg *audit.Log, exec string, n int) {
	t.Helper()
	for range n {
		_, err := lg.Append(context.Background(), audit.Event{Type: audit.PlanReceived, ExecutionID: exec})
		require.NoError(t, err)
	}
}

// headAfter is the head after the first n records of st.
func headAfter(t *testing.T, st *memstore.Storage, n int) audit.Head {
	t.Helper()
	b, err := audit.NewTreeBuilder(0, nil)
	require.NoError(t, err)
	recs := st.Records()[:n]
	for _, r := range recs {
		_, err := b.Add(r.Line)
		require.NoError(t, err)
	}
	return audit.Head{Sequence: uint64(n), Hash: recs[n-1].Hash, Tree: b.Edge()}
}

// requireHalted checks that lg halted on an integrity failure: it refuses
// plans, reports the failure as its health and signs nothing more.
func requireHalted(t *testing.T, lg *audit.Log) {
	t.Helper()
	require.ErrorIs(t, lg.Halted(), audit.ErrIntegrity)
	require.ErrorIs(t, lg.Err(), audit.ErrUnavailable)
	_, err := lg.Append(context.Background(), audit.Event{Type: audit.PlanReceived, ExecutionID: "refused"})
	require.ErrorIs(t, err, audit.ErrUnavailable)
	_, signed, err := lg.SignCheckpoint(context.Background())
	require.ErrorIs(t, err, audit.ErrIntegrity)
	require.False(t, signed)
}

// TestRolledBackStoreIsNeverSigned: the first case on a store two
// processes share. Records are deleted from the end and the head moved
// back under them, and traffic goes on: the process that wrote the
// deleted records refuses to append, the one that appends to the shorter
// log refuses to sign a tree that does not extend the stored checkpoint,
// and both halt.
func TestRolledBackStoreIsNeverSigned(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	key, verifier := newSigningKey(t, "stage4.test/log")
	a := newLog(t, memstore.Open(st, "a"), audit.WithCheckpointKeys(key))
	appendN(t, a, "a", 6)
	_, signed, err := a.SignCheckpoint(t.Context())
	require.NoError(t, err)
	require.True(t, signed)
	msg, err := a.Checkpoint(t.Context())
	require.NoError(t, err)
	before, err := audit.OpenCheckpoint(msg, verifier)
	require.NoError(t, err)

	st.RollBack(headAfter(t, st, 3))
	b := newLog(t, memstore.Open(st, "b"), audit.WithCheckpointKeys(key))
	appendN(t, b, "b", 5) // the shorter log grows past the checkpoint's size
	_, signed, err = b.SignCheckpoint(t.Context())
	require.ErrorIs(t, err, audit.ErrCheckpointMismatch)
	require.ErrorContains(t, err, "does not extend the store's latest checkpoint of 6 records")
	require.False(t, signed)
	requireHalted(t, b)

	_, err = a.Append(t.Context(), audit.Event{Type: audit.PlanReceived, ExecutionID: "a"})
	require.ErrorIs(t, err, audit.ErrUnavailable)
	requireHalted(t, a)
	require.ErrorContains(t, a.Halted(), "record 6 is no longer the one this store saw")

	msg, err = a.Checkpoint(t.Context())
	require.NoError(t, err)
	after, err := audit.OpenCheckpoint(msg, verifier)
	require.NoError(t, err)
	require.Equal(t, before, after, "the stored checkpoint is still the one auditors hold")
}

// swappableStore is a store whose storage the test replaces under the
// log, as a restored or rewritten database would be.
type swappableStore struct {
	audit.Store
	to atomic.Pointer[audit.Store]
}

func (s *swappableStore) cur() audit.Store {
	if p := s.to.Load(); p != nil {
		return *p
	}
	return s.Store
}
func (s *swappableStore) DurableHead(ctx context.Context) (audit.Head, error) {
	return s.cur().DurableHead(ctx)
}
func (s *swappableStore) ReadHashes(ctx context.Context, idx []int64) ([]tlog.Hash, error) {
	return s.cur().ReadHashes(ctx, idx)
}
func (s *swappableStore) LoadCheckpoint(ctx context.Context) ([]byte, error) {
	return s.cur().LoadCheckpoint(ctx)
}
func (s *swappableStore) VerifierKeys(ctx context.Context) ([]string, error) {
	return s.cur().VerifierKeys(ctx)
}

// TestSignerRemembersWhatItSigned: the whole store is replaced by a fork
// of the log, consistent in itself, with a checkpoint of the fork signed
// by the same key (as an operator holding the key could make): the store
// holds nothing to compare with, but the signer remembers the tree it
// signed and refuses.
func TestSignerRemembersWhatItSigned(t *testing.T) {
	t.Parallel()
	key, _ := newSigningKey(t, "stage4.test/log")
	st := memstore.NewStorage()
	sw := &swappableStore{Store: memstore.Open(st, "")}
	lg := newLog(t, sw, audit.WithCheckpointKeys(key))
	appendN(t, lg, "true", 4)
	_, _, err := lg.SignCheckpoint(t.Context())
	require.NoError(t, err)

	forkSt := memstore.NewStorage()
	fork := newLog(t, memstore.Open(forkSt, ""), audit.WithCheckpointKeys(key))
	appendN(t, fork, "forged", 9)
	_, _, err = fork.SignCheckpoint(t.Context())
	require.NoError(t, err)
	other := audit.Store(memstore.Open(forkSt, "reader"))
	sw.to.Store(&other)

	_, _, err = lg.SignCheckpoint(t.Context())
	require.ErrorIs(t, err, audit.ErrCheckpointMismatch)
	require.ErrorContains(t, err, "the largest checkpoint this process saw of 4 records")
	requireHalted(t, lg)
}

// TestHaltIsForGood: once halted, the log stays unhealthy whatever its
// store's pings say, and reports the halt once.
func TestHaltIsForGood(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	changes := make(chan error, 10)
	pings := &countingStore{Store: memstore.Open(st, ""), pinged: make(chan struct{}, 100)}
	key, _ := newSigningKey(t, "stage4.test/log")
	lg := newLog(t, pings, audit.WithCheckpointKeys(key), audit.WithPingInterval(5*time.Millisecond),
		audit.WithHealthFunc(func(err error) { changes <- err }))
	appendN(t, lg, "e", 2)
	st.BreakHead()
	_, err := lg.Append(t.Context(), audit.Event{Type: audit.PlanReceived, ExecutionID: "e"})
	require.ErrorIs(t, err, audit.ErrIntegrity)
	require.ErrorIs(t, <-changes, audit.ErrIntegrity)
	// Heal the head behind the log's back: the store's pings pass again,
	// and the log stays halted.
	st.BreakHead()
	for range 5 {
		<-pings.pinged
	}
	requireHalted(t, lg)
	select {
	case err := <-changes:
		t.Fatalf("health changed after the halt: %v", err)
	default:
	}
}

// countingStore signals every ping that reached the store.
type countingStore struct {
	audit.Store
	pinged chan struct{}
}

func (c *countingStore) Ping(ctx context.Context) error {
	err := c.Store.Ping(ctx)
	select {
	case c.pinged <- struct{}{}:
	default:
	}
	return err
}

// TestOneSigningIdentityPerStore: the first signing pins its keys; a
// process with another key refuses to sign (and so serve does not start),
// naming both; a rotation signs with the old and the new key together
// first, then with the new one alone, after which the old one is refused.
func TestOneSigningIdentityPerStore(t *testing.T) {
	t.Parallel()
	oldKey, oldV := newSigningKey(t, "stage4.test/log")
	newKey, newV := newSigningKey(t, "stage4.test/log")
	otherKey, _ := newSigningKey(t, "stage4.test/log")
	st := memstore.NewStorage()
	sign := func(keys ...audit.SigningKey) ([]byte, error) {
		lg, err := audit.New(memstore.Open(st, ""), audit.WithCheckpointKeys(keys...))
		require.NoError(t, err)
		defer lg.Close()
		appendN(t, lg, "e", 1)
		if _, _, err := lg.SignCheckpoint(t.Context()); err != nil {
			require.NoError(t, lg.Halted(), "a refused key is a refusal at start, not a halt")
			return nil, err
		}
		return lg.Checkpoint(t.Context())
	}
	_, err := sign(oldKey)
	require.NoError(t, err)

	_, err = sign(otherKey)
	require.ErrorIs(t, err, audit.ErrSigningKeyMismatch)
	require.ErrorContains(t, err, fmt.Sprintf("pins the checkpoint verifier keys stage4.test/log+%08x", oldKey.KeyHash()))
	require.ErrorContains(t, err, fmt.Sprintf("signs with stage4.test/log+%08x", otherKey.KeyHash()))

	both, err := sign(oldKey, newKey)
	require.NoError(t, err)
	for _, v := range []note.Verifier{oldV, newV} {
		_, err := audit.OpenCheckpoint(both, v)
		require.NoError(t, err, "during the overlap, holders of either verifier key can check the checkpoints")
	}
	_, err = sign(newKey)
	require.NoError(t, err)
	_, err = sign(oldKey)
	require.ErrorIs(t, err, audit.ErrSigningKeyMismatch, "the old key is retired once the new one signed alone")
}

// TestUnpinnedStoreNamesItsSigner: a store signed before keys were pinned
// (its checkpoint, no pin) refuses another key, named by the checkpoint's
// signature.
func TestUnpinnedStoreNamesItsSigner(t *testing.T) {
	t.Parallel()
	key, _ := newSigningKey(t, "stage4.test/log")
	other, _ := newSigningKey(t, "stage4.test/log")
	st := memstore.NewStorage()
	lg := openLog(t, st)
	appendN(t, lg, "e", 2)
	th, err := lg.Tree(t.Context())
	require.NoError(t, err)
	msg, err := audit.SignCheckpoint(key, th)
	require.NoError(t, err)
	require.NoError(t, lg.Close())
	s := memstore.Open(st, "")
	require.NoError(t, s.SaveCheckpoint(t.Context(), th.Size, msg))
	require.NoError(t, s.Close())

	lg = openLog(t, st, audit.WithCheckpointKeys(other))
	_, _, err = lg.SignCheckpoint(t.Context())
	require.ErrorIs(t, err, audit.ErrSigningKeyMismatch)
	require.ErrorContains(t, err, fmt.Sprintf("signed by [stage4.test/log+%08x]", key.KeyHash()))

	lg = openLog(t, st, audit.WithCheckpointKeys(key))
	_, _, err = lg.SignCheckpoint(t.Context())
	require.NoError(t, err, "its own key signs on, and is pinned")
}

func TestSigningKeysMustShareTheirName(t *testing.T) {
	t.Parallel()
	a, _ := newSigningKey(t, "stage4.test/log")
	b, _ := newSigningKey(t, "stage4.test/other")
	_, err := audit.New(memstore.Open(memstore.NewStorage(), ""), audit.WithCheckpointKeys(a, b))
	require.ErrorContains(t, err, "different names")
	_, err = audit.New(memstore.Open(memstore.NewStorage(), ""), audit.WithCheckpointKeys(a, a))
	require.ErrorContains(t, err, "given twice")
}

// fakeCosigner cosigns with a line of its own, or fails as told.
type fakeCosigner struct {
	err   func(cp audit.Checkpoint) error
	calls atomic.Int32
}

const fakeCosignature = "\u2014 witness.test/w AAAAAAAAAAA=\n"

func (f *fakeCosigner) Cosign(_ context.Context, msg []byte) ([]byte, error) {
	f.calls.Add(1)
	cp, err := audit.ParseCheckpoint(msg)
	if err != nil {
		return nil, err
	}
	if f.err != nil {
		if err := f.err(cp); err != nil {
			return nil, err
		}
	}
	return append(append([]byte(nil), msg...), fakeCosignature...), nil
}

// TestCosignedCheckpointsOnly: with a cosigner the log serves only
// checkpoints that met the quorum; witnesses that fail keep the last
// cosigned one served and stop nothing; a witness that holds a tree the
// log does not extend halts it; one ahead of the checkpoint (another
// replica's newer tree) gets a newer signature.
func TestCosignedCheckpointsOnly(t *testing.T) {
	t.Parallel()
	key, _ := newSigningKey(t, "stage4.test/log")
	var fail atomic.Value // func(audit.Checkpoint) error
	fail.Store(func(audit.Checkpoint) error { return errors.New("quorum not met") })
	cs := &fakeCosigner{err: func(cp audit.Checkpoint) error { return fail.Load().(func(audit.Checkpoint) error)(cp) }}
	st := memstore.NewStorage()
	lg := newLog(t, memstore.Open(st, ""), audit.WithCheckpointKeys(key), audit.WithCosigner(cs))
	appendN(t, lg, "e", 2)

	_, signed, err := lg.SignCheckpoint(t.Context())
	require.NoError(t, err, "witnesses that do not answer stop nothing")
	require.True(t, signed)
	_, err = lg.Checkpoint(t.Context())
	require.ErrorIs(t, err, audit.ErrNoCheckpoint, "nothing is served below the quorum")

	fail.Store(func(audit.Checkpoint) error { return nil })
	_, signed, err = lg.SignCheckpoint(t.Context())
	require.NoError(t, err)
	require.False(t, signed, "the same tree is not signed again, but cosigned now")
	msg, err := lg.Checkpoint(t.Context())
	require.NoError(t, err)
	require.True(t, strings.HasSuffix(string(msg), fakeCosignature))
	cp, err := audit.ParseCheckpoint(msg)
	require.NoError(t, err)
	require.Equal(t, uint64(2), cp.Size)
	calls := cs.calls.Load()
	_, _, err = lg.SignCheckpoint(t.Context())
	require.NoError(t, err)
	require.Equal(t, calls, cs.calls.Load(), "a cosigned tree is not sent again")

	// A witness ahead of the checkpoint, within the log's durable tree: a
	// newer tree is signed and cosigned.
	appendN(t, lg, "e", 3)
	fail.Store(func(cp audit.Checkpoint) error {
		if cp.Size < 5 {
			return &audit.WitnessAheadError{Witness: "witness.test/w", Size: 5}
		}
		return nil
	})
	_, _, err = lg.SignCheckpoint(t.Context())
	require.NoError(t, err)
	require.NoError(t, lg.Halted())

	// A witness ahead of the durable tree: the log was rolled back.
	appendN(t, lg, "e", 1)
	fail.Store(func(audit.Checkpoint) error { return &audit.WitnessAheadError{Witness: "witness.test/w", Size: 100} })
	_, _, err = lg.SignCheckpoint(t.Context())
	require.ErrorIs(t, err, audit.ErrIntegrity)
	require.ErrorContains(t, err, "witness witness.test/w cosigned a tree of 100 records, and this log's durable tree holds 6")
	requireHalted(t, lg)
	msg, err = lg.Checkpoint(t.Context())
	require.NoError(t, err)
	cp, err = audit.ParseCheckpoint(msg)
	require.NoError(t, err)
	require.Equal(t, uint64(5), cp.Size, "the latest cosigned checkpoint is still served")
}

// TestWitnessInconsistencyHalts: a witness that refuses the proof halts
// the log.
func TestWitnessInconsistencyHalts(t *testing.T) {
	t.Parallel()
	key, _ := newSigningKey(t, "stage4.test/log")
	cs := &fakeCosigner{err: func(audit.Checkpoint) error {
		return fmt.Errorf("%w: witness w: the consistency proof does not verify (422)", audit.ErrIntegrity)
	}}
	lg := newLog(t, memstore.Open(memstore.NewStorage(), ""), audit.WithCheckpointKeys(key), audit.WithCosigner(cs))
	appendN(t, lg, "e", 1)
	_, _, err := lg.SignCheckpoint(t.Context())
	require.ErrorIs(t, err, audit.ErrIntegrity)
	requireHalted(t, lg)
}
