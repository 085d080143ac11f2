package witness_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/torchwood"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/internal/witness"
	"github.com/stage4/stage4/internal/witness/witnesstest"
)

// These tests run real litewitness processes (filippo.io/torchwood v0.6.1,
// the module's Go tool) through witnesstest; they skip without OpenSSH's
// client tools, and fail then under CI=true.

// testTimeout bounds each test's requests to the witnesses.
const testTimeout = 30 * time.Second

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func parsePolicy(t *testing.T, lines ...string) *witness.Policy {
	t.Helper()
	p, err := witness.ParsePolicy(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	require.NoError(t, err)
	return p
}

func newCosigner(t *testing.T, p *witness.Policy, lg *witnesstest.Log, opts ...witness.Option) *witness.Cosigner {
	t.Helper()
	c, err := witness.NewCosigner(p, witness.HashProver(lg.ReadHashes), opts...)
	require.NoError(t, err)
	return c
}

func newClient(t *testing.T, p *witness.Policy, name string, lg *witnesstest.Log, opts ...witness.Option) *witness.Client {
	t.Helper()
	w, ok := p.Witness(name)
	require.True(t, ok, name)
	c, err := witness.NewClient(w, witness.HashProver(lg.ReadHashes), opts...)
	require.NoError(t, err)
	return c
}

func TestLitewitnessCosigns(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	lg := witnesstest.NewLog(t, "stage4.test/audit")
	lw := witnesstest.Start(t, "witness.test/w1", lg.VerifierKey)
	p := parsePolicy(t, lw.PolicyLine(), "quorum witness.test/w1")
	cosigner := newCosigner(t, p, lg)

	for _, grow := range []int{5, 7, 0, 1} { // the first from old size 0, then with proofs; 0: the same tree again
		lg.Append(t, "record", grow)
		tree := lg.Tree(t)
		before := time.Now().Add(-time.Second) // the cosignature's time has whole seconds
		res, err := cosigner.Cosign(ctx, lg.Checkpoint(t))
		require.NoError(t, err, "size %d", tree.Size)
		require.Len(t, res.Outcomes, 1)
		require.Equal(t, witness.StatusCosigned, res.Outcomes[0].Status)

		// torchwood's verifier, which the policy's witness carries, checks
		// the cosignature; the log's key checks the log's signature.
		v := p.Witnesses()[0].Verifier()
		require.IsType(t, &torchwood.CosignatureVerifier{}, v)
		n, err := note.Open(res.Checkpoint, note.VerifierList(lg.Verifier, v))
		require.NoError(t, err)
		require.Len(t, n.Sigs, 2)
		require.Empty(t, n.UnverifiedSigs)
		ts, err := torchwood.CosignatureTimestamp(n.Sigs[1])
		require.NoError(t, err)
		require.WithinRange(t, time.Unix(ts, 0), before, time.Now())

		verified, err := witness.VerifyCheckpoint(res.Checkpoint, lg.Verifier, p)
		require.NoError(t, err)
		require.Equal(t, tree, verified.Checkpoint.TreeHead)
		require.Equal(t, []string{"witness.test/w1"}, verified.Cosigners())
		require.Equal(t, time.Unix(ts, 0), verified.Cosignatures[0].Time)

		size, ok := lw.LogSize(t, lg.Origin)
		require.True(t, ok)
		require.Equal(t, tree.Size, size, "the witness holds the tree it cosigned")
	}

	// The log's signature alone does not meet the quorum.
	v, err := witness.VerifyCheckpoint(lg.Checkpoint(t), lg.Verifier, p)
	require.ErrorIs(t, err, witness.ErrQuorumNotMet)
	require.Empty(t, v.Cosigners())
}

func TestLitewitnessQuorumWithAWitnessDown(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	lg := witnesstest.NewLog(t, "stage4.test/audit")
	w1 := witnesstest.Start(t, "witness.test/w1", lg.VerifierKey)
	w2 := witnesstest.Start(t, "witness.test/w2", lg.VerifierKey)
	w2.Stop(t)

	tests := []struct {
		name      string
		group     string
		wantErr   error // nil: the quorum is met
		cosigners []string
	}{
		{name: "2 of 2", group: "group g 2 witness.test/w1 witness.test/w2", wantErr: witness.ErrQuorumNotMet},
		{name: "all", group: "group g all witness.test/w1 witness.test/w2", wantErr: witness.ErrQuorumNotMet},
		{name: "any", group: "group g any witness.test/w1 witness.test/w2", cosigners: []string{"witness.test/w1"}},
		{name: "1 of 2", group: "group g 1 witness.test/w1 witness.test/w2", cosigners: []string{"witness.test/w1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := parsePolicy(t, w1.PolicyLine(), w2.PolicyLine(), tt.group, "quorum g")
			lg.Append(t, "record", 3)
			res, err := newCosigner(t, p, lg).Cosign(ctx, lg.Checkpoint(t))
			require.Len(t, res.Outcomes, 2)
			require.Equal(t, "witness.test/w1", res.Outcomes[0].Witness)
			require.NoError(t, res.Outcomes[0].Err)
			require.Equal(t, "witness.test/w2", res.Outcomes[1].Witness)
			require.Equal(t, witness.StatusDown, res.Outcomes[1].Status, "%v", res.Outcomes[1].Err)
			require.ErrorIs(t, res.Outcomes[1].Err, witness.ErrDown)
			var werr *witness.Error
			require.ErrorAs(t, res.Outcomes[1].Err, &werr)
			require.Equal(t, "witness.test/w2", werr.Witness)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				require.ErrorIs(t, err, witness.ErrDown, "the error says why")
				require.Nil(t, res.Checkpoint, "never a checkpoint that does not meet the quorum")
				return
			}
			require.NoError(t, err)
			v, err := witness.VerifyCheckpoint(res.Checkpoint, lg.Verifier, p)
			require.NoError(t, err)
			require.Equal(t, tt.cosigners, v.Cosigners())
		})
	}
}

// recorder is an http.RoundTripper that notes the old size of each
// add-checkpoint request and the status of its answer.
type recorder struct {
	mu       sync.Mutex
	requests []string // "old <size> -> <status>"
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	old, _, _ := strings.Cut(string(body), "\n")
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = append(r.requests, old+" -> "+strconv.Itoa(resp.StatusCode))
	return resp, nil
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	reqs := r.requests
	r.requests = nil
	return reqs
}

func TestLitewitnessConflictTellsTheSize(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	lg := witnesstest.NewLog(t, "stage4.test/audit")
	lw := witnesstest.Start(t, "witness.test/w1", lg.VerifierKey)
	p := parsePolicy(t, lw.PolicyLine(), "quorum witness.test/w1")
	rec := &recorder{}
	opt := witness.WithHTTPClient(&http.Client{Transport: rec})
	// Two clients of one witness: two replicas of one log, or one before
	// and after a restart.
	a := newClient(t, p, "witness.test/w1", lg, opt)
	b := newClient(t, p, "witness.test/w1", lg, opt)

	lg.Append(t, "record", 5)
	_, err := a.AddCheckpoint(ctx, lg.Checkpoint(t))
	require.NoError(t, err)
	require.Equal(t, []string{"old 0 -> 200"}, rec.take())

	// b does not know the witness's size: its 409 tells 5, and b proves
	// 9 from 5.
	_, known := b.KnownSize()
	require.False(t, known)
	lg.Append(t, "record", 4)
	cosig, err := b.AddCheckpoint(ctx, lg.Checkpoint(t))
	require.NoError(t, err)
	require.Equal(t, "witness.test/w1", cosig.Witness)
	require.Equal(t, []string{"old 0 -> 409", "old 5 -> 200"}, rec.take())
	size, known := b.KnownSize()
	require.True(t, known)
	require.EqualValues(t, 9, size)

	// a still thinks 5: the witness says 9, and a proves 12 from 9.
	lg.Append(t, "record", 3)
	_, err = a.AddCheckpoint(ctx, lg.Checkpoint(t))
	require.NoError(t, err)
	require.Equal(t, []string{"old 5 -> 409", "old 9 -> 200"}, rec.take())
	size, ok := lw.LogSize(t, lg.Origin)
	require.True(t, ok)
	require.EqualValues(t, 12, size)
}

func TestLitewitnessInconsistent(t *testing.T) {
	t.Parallel()
	lw := witnesstest.Start(t, "witness.test/w1")
	tests := []struct {
		name string
		// offer makes the log whose checkpoint is offered after the
		// witness cosigned lg's first 5 records (the same key, another
		// tree).
		offer func(t *testing.T, lg *witnesstest.Log) *witnesstest.Log
		// fresh: a client that does not know the witness's size asks;
		// else the one that got the first cosignature.
		fresh bool
		// want is in the error's message.
		want string
	}{
		{
			name:  "a different tree of the same size",
			offer: func(t *testing.T, lg *witnesstest.Log) *witnesstest.Log { return forked(t, lg, 0, 5) },
			want:  "422",
		},
		{
			name:  "a different tree of the same size, asked afresh",
			offer: func(t *testing.T, lg *witnesstest.Log) *witnesstest.Log { return forked(t, lg, 0, 5) },
			fresh: true,
			want:  "422",
		},
		{
			name:  "a larger tree that does not extend it",
			offer: func(t *testing.T, lg *witnesstest.Log) *witnesstest.Log { return forked(t, lg, 2, 6) },
			want:  "the consistency proof from 5 records does not verify",
		},
		{
			name:  "a larger tree that does not extend it, asked afresh",
			offer: func(t *testing.T, lg *witnesstest.Log) *witnesstest.Log { return forked(t, lg, 2, 6) },
			fresh: true,
			want:  "the consistency proof from 5 records does not verify",
		},
		{
			name:  "a smaller tree",
			offer: func(t *testing.T, lg *witnesstest.Log) *witnesstest.Log { return forked(t, lg, 3, 0) },
			want:  "cosigned a tree of 5 records, more than this checkpoint's 3",
		},
		{
			name:  "a smaller tree, asked afresh",
			offer: func(t *testing.T, lg *witnesstest.Log) *witnesstest.Log { return forked(t, lg, 3, 0) },
			fresh: true,
			want:  "cosigned a tree of 5 records, more than this checkpoint's 3",
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			// A log of its own for each case, added to the running witness.
			lg := witnesstest.NewLog(t, "stage4.test/audit-"+strconv.Itoa(i))
			lw.AddLog(t, lg.VerifierKey)
			p := parsePolicy(t, lw.PolicyLine(), "quorum witness.test/w1")
			// The client proves from the log whose checkpoint it offers,
			// as a forked log proves from its own tree.
			offered := lg
			prove := witness.HashProver(func(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
				return offered.ReadHashes(ctx, indexes)
			})
			w, _ := p.Witness("witness.test/w1")
			newClient := func() *witness.Client {
				c, err := witness.NewClient(w, prove)
				require.NoError(t, err)
				return c
			}
			c := newClient()
			lg.Append(t, "record", 5)
			_, err := c.AddCheckpoint(ctx, lg.Checkpoint(t))
			require.NoError(t, err)
			if tt.fresh {
				c = newClient()
			}

			offered = tt.offer(t, lg)
			_, err = c.AddCheckpoint(ctx, offered.Checkpoint(t))
			require.ErrorIs(t, err, witness.ErrInconsistent)
			require.Equal(t, witness.StatusInconsistent, witness.StatusOf(err))
			require.ErrorContains(t, err, tt.want)
			size, _ := lw.LogSize(t, lg.Origin)
			require.EqualValues(t, 5, size, "the witness keeps the tree it cosigned")
		})
	}
}

// forked returns a log with lg's key whose tree has the first same
// records of lg ("record 0" to "record <same-1>"), then other other ones.
func forked(t *testing.T, lg *witnesstest.Log, same, other int) *witnesstest.Log {
	l := lg.Fork()
	l.Append(t, "record", same)
	l.Append(t, "forged", other)
	return l
}

func TestLitewitnessInconsistencyFailsClosed(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	lg := witnesstest.NewLog(t, "stage4.test/audit")
	w1 := witnesstest.Start(t, "witness.test/w1", lg.VerifierKey)
	w2 := witnesstest.Start(t, "witness.test/w2", lg.VerifierKey)
	p := parsePolicy(t, w1.PolicyLine(), w2.PolicyLine(), "group g any witness.test/w1 witness.test/w2", "quorum g")

	// Someone with the log's key showed w1 a different tree of 5 records.
	fork := lg.Fork()
	fork.Append(t, "forged", 5)
	_, err := newClient(t, p, "witness.test/w1", fork).AddCheckpoint(ctx, fork.Checkpoint(t))
	require.NoError(t, err)

	lg.Append(t, "record", 5)
	res, err := newCosigner(t, p, lg).Cosign(ctx, lg.Checkpoint(t))
	require.ErrorIs(t, err, witness.ErrInconsistent)
	require.NotErrorIs(t, err, witness.ErrQuorumNotMet)
	require.Nil(t, res.Checkpoint, "w2's cosignature alone meets the quorum, but a fork is a fork")
	require.Equal(t, witness.StatusInconsistent, res.Outcomes[0].Status)
	require.Equal(t, witness.StatusCosigned, res.Outcomes[1].Status)
}

func TestLitewitnessMisconfigured(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	lg := witnesstest.NewLog(t, "stage4.test/audit")
	// A witness that knows another log, and one that knows another key
	// under the log's origin.
	unknown := witnesstest.Start(t, "witness.test/unknown")
	unknown.AddLog(t, witnesstest.NewLog(t, "stage4.test/other").VerifierKey)
	otherKey := witnesstest.Start(t, "witness.test/other-key", witnesstest.NewLog(t, lg.Origin).VerifierKey)
	good := witnesstest.Start(t, "witness.test/good", lg.VerifierKey)
	// The policy has the wrong key for good.
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	wrongKey := "witness witness.test/good " + hex.EncodeToString(pub) + " " + good.URL

	p := parsePolicy(t, unknown.PolicyLine(), otherKey.PolicyLine(), wrongKey,
		"group g any witness.test/unknown witness.test/other-key witness.test/good", "quorum g")
	lg.Append(t, "record", 2)
	res, err := newCosigner(t, p, lg).Cosign(ctx, lg.Checkpoint(t))
	require.ErrorIs(t, err, witness.ErrQuorumNotMet)
	require.ErrorIs(t, err, witness.ErrMisconfigured)
	for _, o := range res.Outcomes {
		require.Equal(t, witness.StatusMisconfigured, o.Status, "%s: %v", o.Witness, o.Err)
	}
	require.ErrorContains(t, res.Outcomes[0].Err, "does not know this log")
	require.ErrorContains(t, res.Outcomes[1].Err, "does not know this log")
	require.ErrorContains(t, res.Outcomes[2].Err, "no cosignature by the policy's key")
	size, _ := good.LogSize(t, lg.Origin)
	require.EqualValues(t, 2, size, "good did cosign, with the key the policy does not name")
	require.False(t, errors.Is(err, witness.ErrInconsistent))
}

// TestLitewitnessVerifierKey checks that a witness's verifier key is the
// one litewitness prints, and the cosigned checkpoint's lines.
func TestLitewitnessVerifierKey(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	lg := witnesstest.NewLog(t, "stage4.test/audit")
	lw := witnesstest.Start(t, "witness.test/w1", lg.VerifierKey)
	p := parsePolicy(t, lw.PolicyLine(), "quorum witness.test/w1")
	lg.Append(t, "record", 1)
	res, err := newCosigner(t, p, lg).Cosign(ctx, lg.Checkpoint(t))
	require.NoError(t, err)

	w, _ := p.Witness("witness.test/w1")
	vkey := w.VerifierKey()
	require.True(t, strings.HasPrefix(vkey, "witness.test/w1+"), vkey)
	require.Contains(t, lw.Output(), "vkey="+vkey, "litewitness logs its verifier key at start")

	sc := bufio.NewScanner(bytes.NewReader(res.Checkpoint))
	var sigLines []string
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "— ") {
			sigLines = append(sigLines, sc.Text())
		}
	}
	require.Len(t, sigLines, 2)
	require.True(t, strings.HasPrefix(sigLines[1], "— witness.test/w1 "), sigLines[1])
	require.Equal(t, sigLines[1]+"\n", res.Outcomes[0].Cosignature.Line)
}
