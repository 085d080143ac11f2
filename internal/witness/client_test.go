package witness_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/torchwood"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"

	"github.com/stage4/stage4/internal/witness"
	"github.com/stage4/stage4/internal/witness/witnesstest"
)

// The answers that litewitness does not give on cue, from a stand-in
// witness: the mapping of every answer of c2sp.org/tlog-witness to an
// error kind.

// witnessKey is the private key of keyHex(i).
func witnessKey(i int) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	seed[0] = byte(i)
	return ed25519.NewKeyFromSeed(seed)
}

// cosign returns the cosignature lines of checkpoint's text by the witness
// named name with witnessKey(i), made with torchwood's signer.
func cosign(t *testing.T, name string, i int, checkpoint []byte) string {
	t.Helper()
	s, err := torchwood.NewCosignatureSigner(name, witnessKey(i))
	require.NoError(t, err)
	text, _, ok := bytes.Cut(checkpoint, []byte("\n\n"))
	require.True(t, ok)
	signed, err := note.Sign(&note.Note{Text: string(text) + "\n"}, s)
	require.NoError(t, err)
	_, sigs, _ := bytes.Cut(signed, []byte("\n\n"))
	return string(sigs)
}

// standIn starts a stand-in witness w1 (keyHex(1)) that answers with
// answer, and returns the client of it, for a log of 10 records.
func standIn(t *testing.T, answer http.HandlerFunc, opts ...witness.Option) (*witness.Client, *witnesstest.Log) {
	t.Helper()
	srv := httptest.NewServer(answer)
	t.Cleanup(srv.Close)
	p := parsePolicy(t, "witness w1 "+keyHex(1)+" "+srv.URL, "quorum w1")
	lg := witnesstest.NewLog(t, "stage4.test/audit")
	lg.Append(t, "record", 10)
	return newClient(t, p, "w1", lg, opts...), lg
}

// size answers 409 with the witness's size n.
func size(w http.ResponseWriter, n int) {
	w.Header().Set("Content-Type", "text/x.tlog.size")
	w.WriteHeader(http.StatusConflict)
	fmt.Fprintf(w, "%d\n", n)
}

func TestClientAnswers(t *testing.T) {
	t.Parallel()
	// checkpoint is set by each case before its request: the stand-in
	// cosigns it.
	tests := []struct {
		name   string
		answer func(t *testing.T, checkpoint []byte) http.HandlerFunc
		status witness.Status
		want   string // in the error
		ahead  uint64 // witness.Error.Ahead
	}{
		{
			name: "cosigned, other signatures ignored",
			answer: func(t *testing.T, checkpoint []byte) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					body, _ := io.ReadAll(r.Body)
					if r.Method != http.MethodPost || r.URL.Path != "/add-checkpoint" ||
						!bytes.Equal(body, append([]byte("old 0\n\n"), checkpoint...)) {
						http.Error(w, "unexpected request", http.StatusBadRequest)
						return
					}
					io.WriteString(w, cosign(t, "w9", 9, checkpoint)+cosign(t, "w1", 1, checkpoint))
				}
			},
			status: witness.StatusCosigned,
		},
		{name: "500", answer: status(500, "database is locked"), status: witness.StatusDown, want: "500 Internal Server Error"},
		{name: "503", answer: status(503, ""), status: witness.StatusDown, want: "503"},
		{name: "429", answer: status(429, "slow down"), status: witness.StatusDown, want: "429 Too Many Requests"},
		{name: "408", answer: status(408, ""), status: witness.StatusDown, want: "408"},
		{name: "400", answer: status(400, "invalid input"), status: witness.StatusRefused, want: `400 Bad Request: "invalid input"`},
		{name: "405", answer: status(405, ""), status: witness.StatusRefused, want: "405"},
		{name: "403", answer: status(403, "invalid signature"), status: witness.StatusMisconfigured, want: "does not know this log's origin or key (403"},
		{name: "404", answer: status(404, "unknown log"), status: witness.StatusMisconfigured, want: "does not know this log's origin or key (404"},
		{name: "422", answer: status(422, "bad consistency proof"), status: witness.StatusInconsistent, want: "the consistency proof from 0 records does not verify"},
		{
			name: "redirect",
			answer: func(*testing.T, []byte) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, "https://elsewhere.example/add-checkpoint", http.StatusPermanentRedirect)
				}
			},
			status: witness.StatusMisconfigured,
			want:   `it redirects to "https://elsewhere.example/add-checkpoint" (308)`,
		},
		{
			name: "409 without its content type",
			answer: func(*testing.T, []byte) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(http.StatusConflict)
					io.WriteString(w, "5\n")
				}
			},
			status: witness.StatusRefused,
			want:   `Content-Type "text/plain; charset=utf-8", want text/x.tlog.size`,
		},
		{
			name: "409 with a body that is no size",
			answer: func(*testing.T, []byte) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "text/x.tlog.size")
					w.WriteHeader(http.StatusConflict)
					io.WriteString(w, "05\n")
				}
			},
			status: witness.StatusRefused,
			want:   `the body "05\n" is not a tree size`,
		},
		{
			name: "409 with a larger size",
			answer: func(*testing.T, []byte) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { size(w, 11) }
			},
			status: witness.StatusInconsistent,
			want:   "it cosigned a tree of 11 records, more than this checkpoint's 10",
			ahead:  11,
		},
		{
			// c2sp.org/tlog-witness: 409 when the sizes match and the
			// roots do not (litewitness v0.6.1 answers 422).
			name: "409 with the same size",
			answer: func(*testing.T, []byte) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { size(w, 10) }
			},
			status: witness.StatusInconsistent,
			want:   "it cosigned a different tree of the checkpoint's size 10",
		},
		{
			name: "409 with a size that keeps changing",
			answer: func(*testing.T, []byte) http.HandlerFunc {
				var n atomic.Int32
				return func(w http.ResponseWriter, r *http.Request) { size(w, int(n.Add(1))) }
			},
			status: witness.StatusRefused,
			want:   "its tree size changed under each of 3 requests",
		},
		{name: "200 without cosignatures", answer: status(200, "ok\n"), status: witness.StatusRefused, want: "200 without cosignature lines"},
		{name: "200 empty", answer: status(200, ""), status: witness.StatusRefused, want: "200 without cosignature lines"},
		{
			name: "200 with another key's cosignature",
			answer: func(t *testing.T, checkpoint []byte) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, cosign(t, "w1", 2, checkpoint)) }
			},
			status: witness.StatusMisconfigured,
			want:   "no cosignature by the policy's key w1+",
		},
		{
			name: "200 with a cosignature of another checkpoint",
			answer: func(t *testing.T, checkpoint []byte) http.HandlerFunc {
				other := bytes.Replace(checkpoint, []byte("\n10\n"), []byte("\n11\n"), 1)
				return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, cosign(t, "w1", 1, other)) }
			},
			status: witness.StatusMisconfigured,
			want:   "its cosignature does not verify with the policy's key",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var answer atomic.Pointer[http.HandlerFunc]
			c, lg := standIn(t, func(w http.ResponseWriter, r *http.Request) { (*answer.Load())(w, r) })
			checkpoint := lg.Checkpoint(t)
			h := tt.answer(t, checkpoint)
			answer.Store(&h)

			before := time.Now().Truncate(time.Second) // the cosignature's time has whole seconds
			cosig, err := c.AddCheckpoint(testContext(t), checkpoint)
			require.Equal(t, tt.status, witness.StatusOf(err), "%v", err)
			if tt.status == witness.StatusCosigned {
				require.NoError(t, err)
				require.Equal(t, "w1", cosig.Witness)
				n, err := note.Open(append(bytes.Clone(checkpoint), cosig.Line...), note.VerifierList(c.Witness().Verifier()))
				require.NoError(t, err, "the line is w1's cosignature")
				require.Len(t, n.Sigs, 1)
				require.WithinRange(t, cosig.Time, before, time.Now())
				size, known := c.KnownSize()
				require.True(t, known)
				require.EqualValues(t, 10, size)
				return
			}
			var werr *witness.Error
			require.ErrorAs(t, err, &werr)
			require.Equal(t, "w1", werr.Witness)
			require.ErrorContains(t, err, tt.want)
			require.Equal(t, tt.ahead, werr.Ahead, "the size a witness ahead of the checkpoint holds, and only that")
		})
	}
}

// status answers with an HTTP status and a body.
func status(code int, body string) func(*testing.T, []byte) http.HandlerFunc {
	return func(*testing.T, []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			io.WriteString(w, body)
		}
	}
}

func TestClientTimeout(t *testing.T) {
	t.Parallel()
	// A witness that never answers is down once the timeout passes.
	c, lg := standIn(t, hang(nil), witness.WithTimeout(50*time.Millisecond))
	_, err := c.AddCheckpoint(testContext(t), lg.Checkpoint(t))
	require.ErrorIs(t, err, witness.ErrDown)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// hang answers when the client goes away, after closing arrived (if not
// nil). It reads the request first: the server notices a client going
// away only once the body is read.
func hang(arrived chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if arrived != nil {
			close(arrived)
		}
		<-r.Context().Done()
	}
}

func TestClientUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens there any more
	p := parsePolicy(t, "witness w1 "+keyHex(1)+" "+srv.URL, "quorum w1")
	lg := witnesstest.NewLog(t, "stage4.test/audit")
	lg.Append(t, "record", 1)
	_, err := newClient(t, p, "w1", lg).AddCheckpoint(testContext(t), lg.Checkpoint(t))
	require.ErrorIs(t, err, witness.ErrDown)
	require.ErrorContains(t, err, "connection refused")
}

func TestClientCallerGivesUp(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	c, lg := standIn(t, hang(arrived))
	ctx, cancel := context.WithCancel(testContext(t))
	go func() {
		<-arrived
		cancel()
	}()
	_, err := c.AddCheckpoint(ctx, lg.Checkpoint(t))
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, witness.StatusError, witness.StatusOf(err), "Stage-4's end, not the witness's: %v", err)
}

func TestClientRefusesAMalformedCheckpoint(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	c, _ := standIn(t, func(w http.ResponseWriter, r *http.Request) { requests.Add(1) })
	_, err := c.AddCheckpoint(testContext(t), []byte("not a checkpoint\n"))
	require.ErrorContains(t, err, "malformed checkpoint")
	require.Equal(t, witness.StatusError, witness.StatusOf(err))
	require.Zero(t, requests.Load())
}

func TestStatusString(t *testing.T) {
	t.Parallel()
	var got []string
	for s := witness.StatusCosigned; s <= witness.StatusError+1; s++ {
		got = append(got, s.String())
	}
	require.Equal(t, "cosigned down refused misconfigured inconsistent error Status(6)", strings.Join(got, " "))
}
