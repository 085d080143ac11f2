package witness_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"

	"github.com/stage4/stage4/audit"
	"github.com/stage4/stage4/internal/witness"
	"github.com/stage4/stage4/internal/witness/witnesstest"
)

func TestVerifyCheckpoint(t *testing.T) {
	t.Parallel()
	// w1, w2, w3 have keyHex(1), (2), (3); 2 of them make the quorum.
	p := parsePolicy(t, witnessLines("w0", "w1", "w2", "w3"), "group g 2 w1 w2 w3", "quorum g")
	lg := witnesstest.NewLog(t, "stage4.test/audit")
	lg.Append(t, "record", 4)
	checkpoint := lg.Checkpoint(t)
	with := func(lines ...string) []byte {
		msg := bytes.Clone(checkpoint)
		for _, l := range lines {
			msg = append(msg, l...)
		}
		return msg
	}
	otherLog := witnesstest.NewLog(t, lg.Origin) // the same origin, another key and tree
	otherLog.Append(t, "other", 4)

	tests := []struct {
		name      string
		msg       []byte
		cosigners []string
		wantErr   error
		want      string // in the error
	}{
		{name: "2 of 3", msg: with(cosign(t, "w1", 1, checkpoint), cosign(t, "w3", 3, checkpoint)), cosigners: []string{"w1", "w3"}},
		{name: "3 of 3, in policy order", msg: with(cosign(t, "w3", 3, checkpoint), cosign(t, "w2", 2, checkpoint), cosign(t, "w1", 1, checkpoint)), cosigners: []string{"w1", "w2", "w3"}},
		{name: "unknown signatures ignored", msg: with(cosign(t, "w9", 9, checkpoint), cosign(t, "w1", 1, checkpoint), cosign(t, "w2", 2, checkpoint)), cosigners: []string{"w1", "w2"}},
		{name: "a repeated cosignature counts once", msg: with(cosign(t, "w1", 1, checkpoint), cosign(t, "w1", 1, checkpoint)), cosigners: []string{"w1"}, wantErr: witness.ErrQuorumNotMet},
		{name: "1 of 3", msg: with(cosign(t, "w2", 2, checkpoint)), cosigners: []string{"w2"}, wantErr: witness.ErrQuorumNotMet, want: "g is not met by the cosignatures of [w2]"},
		{name: "outside the quorum", msg: with(cosign(t, "w0", 0, checkpoint), cosign(t, "w1", 1, checkpoint)), cosigners: []string{"w0", "w1"}, wantErr: witness.ErrQuorumNotMet},
		{name: "no cosignatures", msg: checkpoint, wantErr: witness.ErrQuorumNotMet},
		{name: "a plain Ed25519 signature by a witness's key", msg: with(plainSig(t, "w1", 1, checkpoint), cosign(t, "w2", 2, checkpoint)), cosigners: []string{"w2"}, wantErr: witness.ErrQuorumNotMet},
		{name: "a witness's name with another key", msg: with(cosign(t, "w1", 9, checkpoint), cosign(t, "w2", 2, checkpoint)), cosigners: []string{"w2"}, wantErr: witness.ErrQuorumNotMet},
		{
			name:    "a cosignature of another checkpoint",
			msg:     with(cosign(t, "w1", 1, otherLog.Checkpoint(t)), cosign(t, "w2", 2, checkpoint)),
			wantErr: audit.ErrMalformedCheckpoint,
			want:    "the signature by w1+",
		},
		{name: "not signed by the log", msg: otherLog.Checkpoint(t), wantErr: audit.ErrMalformedCheckpoint},
		{name: "not a note", msg: []byte("stage4.test/audit\n4\n"), wantErr: audit.ErrMalformedCheckpoint},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v, err := witness.VerifyCheckpoint(tt.msg, lg.Verifier, p)
			if tt.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tt.wantErr)
				require.ErrorContains(t, err, tt.want)
			}
			if tt.wantErr == nil || tt.wantErr == witness.ErrQuorumNotMet {
				require.Equal(t, tt.cosigners, v.Cosigners())
				require.Equal(t, lg.Tree(t), v.Checkpoint.TreeHead)
				require.Equal(t, lg.Origin, v.Checkpoint.Origin)
			}
		})
	}
}

// plainSig returns a plain Ed25519 note signature line (not a
// cosignature: another algorithm, so another key hash) of checkpoint's
// text by witnessKey(i) under name.
func plainSig(t *testing.T, name string, i int, checkpoint []byte) string {
	t.Helper()
	key := witnessKey(i)
	vkey, err := note.NewEd25519VerifierKey(name, key.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	hash := strings.Split(vkey, "+")[1]
	signer, err := note.NewSigner("PRIVATE+KEY+" + name + "+" + hash + "+" +
		base64.StdEncoding.EncodeToString(append([]byte{1}, key.Seed()...)))
	require.NoError(t, err)
	text, _, _ := bytes.Cut(checkpoint, []byte("\n\n"))
	signed, err := note.Sign(&note.Note{Text: string(text) + "\n"}, signer)
	require.NoError(t, err)
	_, sig, _ := bytes.Cut(signed, []byte("\n\n"))
	return string(sig)
}
