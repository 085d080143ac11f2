package audit_test

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/audit/memstore"
)

// newKey makes a signing key pair named name.
func newKey(t *testing.T, name string) (note.Signer, note.Verifier) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	require.NoError(t, err)
	signer, err := note.NewSigner(skey)
	require.NoError(t, err)
	verifier, err := note.NewVerifier(vkey)
	require.NoError(t, err)
	return signer, verifier
}

func TestCheckpointFormat(t *testing.T) {
	t.Parallel()
	signer, verifier := newKey(t, "stage4.example/audit")
	_, otherVerifier := newKey(t, "stage4.example/audit")
	th := audit.TreeHead{Size: 42, Root: tlog.RecordHash([]byte("x"))}
	msg, err := audit.SignCheckpoint(signer, th)
	require.NoError(t, err)
	text, _, _ := strings.Cut(string(msg), "\n\n")
	// C2SP tlog-checkpoint: origin, decimal size, standard base64 root.
	require.Equal(t, "stage4.example/audit\n42\n"+th.Root.String(), text)

	tests := []struct {
		name     string
		msg      []byte
		verifier note.Verifier
		wantErr  bool
	}{
		{name: "signed by the key", msg: msg, verifier: verifier},
		{name: "another key of the same name", msg: msg, verifier: otherVerifier, wantErr: true},
		{name: "size changed", msg: []byte(strings.Replace(string(msg), "\n42\n", "\n43\n", 1)), verifier: verifier, wantErr: true},
		{name: "not a note", msg: []byte("stage4.example/audit\n42\n"), verifier: verifier, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cp, err := audit.OpenCheckpoint(tt.msg, tt.verifier)
			if tt.wantErr {
				require.ErrorIs(t, err, audit.ErrMalformedCheckpoint)
				return
			}
			require.NoError(t, err)
			require.Equal(t, audit.Checkpoint{Origin: "stage4.example/audit", TreeHead: th}, cp)
		})
	}

	parsed, err := audit.ParseCheckpoint(msg)
	require.NoError(t, err)
	require.Equal(t, th, parsed.TreeHead)
	for _, bad := range []string{"o\n042\nAAAA\n\n", "o\n1\nnot base64\n\n", "o\n1\n\n", "o\n-1\n" + th.Root.String() + "\n\n"} {
		_, err := audit.ParseCheckpoint([]byte(bad))
		require.ErrorIs(t, err, audit.ErrMalformedCheckpoint, "%q", bad)
	}
}

// TestSignCheckpoint: a checkpoint is signed at the first call and then
// only when the durable tree grew; its root is tlog's over the records.
func TestSignCheckpoint(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	signer, verifier := newKey(t, "stage4.test/log")
	lg := openLog(t, st, audit.WithCheckpointSigner(signer))
	ctx := context.Background()

	th, signed, err := lg.SignCheckpoint(ctx)
	require.NoError(t, err)
	require.True(t, signed, "the first call signs, even the empty tree")
	require.Equal(t, uint64(0), th.Size)
	for range 5 {
		_, err := lg.Append(ctx, audit.Event{Type: audit.PlanReceived, ExecutionID: "e"})
		require.NoError(t, err)
	}
	th, signed, err = lg.SignCheckpoint(ctx)
	require.NoError(t, err)
	require.True(t, signed)
	_, signed, err = lg.SignCheckpoint(ctx)
	require.NoError(t, err)
	require.False(t, signed, "nothing new, nothing signed")

	msg, err := lg.Checkpoint(ctx)
	require.NoError(t, err)
	cp, err := audit.OpenCheckpoint(msg, verifier)
	require.NoError(t, err)
	require.Equal(t, th, cp.TreeHead)
	require.Equal(t, uint64(5), cp.Size)
	require.Equal(t, rootOfLog(t, st, 5), cp.Root)
}

// TestSignCheckpointRefusesAForkedLog: a log rewritten (and rehashed)
// after its checkpoint was signed is not signed again: the new checkpoint
// would be a fork of the one auditors hold.
func TestSignCheckpointRefusesAForkedLog(t *testing.T) {
	t.Parallel()
	st := memstore.NewStorage()
	signer, _ := newKey(t, "stage4.test/log")
	lg := openLog(t, st, audit.WithCheckpointSigner(signer))
	ctx := context.Background()
	for range 3 {
		_, err := lg.Append(ctx, audit.Event{Type: audit.PlanReceived, ExecutionID: "e"})
		require.NoError(t, err)
	}
	_, _, err := lg.SignCheckpoint(ctx)
	require.NoError(t, err)
	cp, err := lg.Checkpoint(ctx)
	require.NoError(t, err)
	require.NoError(t, lg.Close())

	// Another log of three records, under the old checkpoint.
	other := memstore.NewStorage()
	olg := openLog(t, other)
	for range 3 {
		_, err := olg.Append(ctx, audit.Event{Type: audit.PlanReceived, ExecutionID: "x"})
		require.NoError(t, err)
	}
	require.NoError(t, olg.Close())
	s := memstore.Open(other, "")
	require.NoError(t, s.SaveCheckpoint(ctx, 3, cp))
	require.NoError(t, s.Close())

	lg = openLog(t, other, audit.WithCheckpointSigner(signer))
	_, _, err = lg.SignCheckpoint(ctx)
	require.ErrorIs(t, err, audit.ErrCheckpointMismatch)
}

func TestCheckpointWithoutKey(t *testing.T) {
	t.Parallel()
	lg := openLog(t, memstore.NewStorage())
	_, err := lg.Checkpoint(context.Background())
	require.ErrorIs(t, err, audit.ErrNoSigningKey)
	_, _, err = lg.SignCheckpoint(context.Background())
	require.ErrorIs(t, err, audit.ErrNoSigningKey)
}

func openLog(t *testing.T, st *memstore.Storage, opts ...audit.Option) *audit.Log {
	t.Helper()
	lg, err := audit.New(memstore.Open(st, ""), opts...)
	require.NoError(t, err)
	t.Cleanup(func() { lg.Close() })
	return lg
}

// rootOfLog computes with tlog alone the root of the tree over the first
// n records of the log in st.
func rootOfLog(t *testing.T, st *memstore.Storage, n int) tlog.Hash {
	t.Helper()
	var all hashList
	for i, r := range st.Records()[:n] {
		hashes, err := tlog.StoredHashes(int64(i), r.Line, all)
		require.NoError(t, err)
		all = append(all, hashes...)
	}
	root, err := tlog.TreeHash(int64(n), all)
	require.NoError(t, err)
	return root
}

type hashList []tlog.Hash

func (l hashList) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		out[i] = l[x]
	}
	return out, nil
}
