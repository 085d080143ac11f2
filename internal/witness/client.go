package witness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"filippo.io/torchwood"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/stage4/stage4/audit"
)

// DefaultTimeout bounds one AddCheckpoint, its retries and proofs
// included, unless WithTimeout says otherwise. A witness answers in
// milliseconds; one that takes seconds is as good as down, and the
// checkpoint signer must not wait on it.
const DefaultTimeout = 5 * time.Second

// maxAttempts bounds the requests of one AddCheckpoint: the first, one
// after a 409 that told the witness's size, and one more in case another
// writer of the same log (a replica) moved the witness in between.
const maxAttempts = 3

// Bounds on what is read of an answer: cosignature lines are about 130
// bytes each; an error body is shown in part only.
const (
	maxAnswerBytes = 64 << 10
	maxShownBytes  = 200
)

// sizeContentType is the media type of a 409 answer's body.
const sizeContentType = "text/x.tlog.size"

// Prover makes the RFC 6962 consistency proof that the log's tree of
// newSize records extends its tree of oldSize records, 0 < oldSize <
// newSize; ctx bounds its reads.
type Prover func(ctx context.Context, oldSize, newSize uint64) (tlog.TreeProof, error)

// HashProver returns the Prover over a log's stored tree hashes, which read
// returns: audit.Log.ReadHashes is one.
func HashProver(read func(ctx context.Context, indexes []int64) ([]tlog.Hash, error)) Prover {
	return func(ctx context.Context, oldSize, newSize uint64) (tlog.TreeProof, error) {
		return tlog.ProveTree(int64(newSize), int64(oldSize), tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
			return read(ctx, indexes)
		}))
	}
}

// Cosignature is a witness's verified cosignature of a checkpoint.
type Cosignature struct {
	// Witness is the witness's name.
	Witness string
	// Time is when the witness says it cosigned: the cosignature/v1
	// timestamp, which the signature covers.
	Time time.Time
	// Line is the note signature line, "— <name> <base64>\n", to append to
	// the checkpoint.
	Line string
}

// Option configures NewClient and NewCosigner.
type Option func(*config)

type config struct {
	timeout time.Duration
	hc      *http.Client
}

// WithTimeout bounds each AddCheckpoint, retries included (default
// DefaultTimeout). A non-positive d keeps the default.
func WithTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// WithHTTPClient sends the requests with hc (default: a client over
// http.DefaultTransport). Redirects are never followed, whatever hc says:
// a witness that redirects has the wrong URL in the policy.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *config) {
		if hc != nil {
			c.hc = hc
		}
	}
}

func newConfig(opts []Option) config {
	c := config{timeout: DefaultTimeout, hc: &http.Client{}}
	for _, o := range opts {
		o(&c)
	}
	hc := *c.hc
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c.hc = &hc
	return c
}

// Client asks one witness to cosign one log's checkpoints with the
// c2sp.org/tlog-witness add-checkpoint call. It remembers the size of the
// latest tree the witness is known to hold, to send the consistency proof
// from there; it starts out not knowing, asks with old size 0, and learns
// the size from the witness's 409. Its calls take turns, and each is
// bounded by the timeout. It is safe for concurrent use.
type Client struct {
	w     Witness
	prove Prover
	cfg   config
	url   string
	turn  chan struct{} // held by the AddCheckpoint under way

	mu    sync.Mutex
	size  uint64 // the size of the witness's latest tree, when known
	known bool
}

// NewClient returns a Client of the witness w, which must have a URL;
// prove makes the consistency proofs of the log.
func NewClient(w Witness, prove Prover, opts ...Option) (*Client, error) {
	if w.URL == "" {
		return nil, fmt.Errorf("witness %s has no URL in the policy: Stage-4 cannot ask it to cosign", w.Name)
	}
	if prove == nil {
		return nil, errors.New("witness client: no Prover")
	}
	return &Client{
		w:     w,
		prove: prove,
		cfg:   newConfig(opts),
		url:   w.URL + "/add-checkpoint",
		turn:  make(chan struct{}, 1),
	}, nil
}

// Witness returns the witness the client asks.
func (c *Client) Witness() Witness { return c.w }

// KnownSize returns the size of the latest tree the witness was known to
// hold at its latest answer, and whether one is known.
func (c *Client) KnownSize() (size uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size, c.known
}

func (c *Client) setKnown(size uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.size, c.known = size, true
}

// AddCheckpoint asks the witness to cosign checkpoint, a checkpoint signed
// by the log (see audit.SignCheckpoint), and returns its verified
// cosignature. A 409 that tells a smaller size is answered with the proof
// from that size. Errors are *Error with a Kind (see ErrDown, ErrRefused,
// ErrMisconfigured, ErrInconsistent), or else come from Stage-4's side: a
// malformed checkpoint, a proof the log could not make, ctx ending.
func (c *Client) AddCheckpoint(ctx context.Context, checkpoint []byte) (Cosignature, error) {
	cp, err := audit.ParseCheckpoint(checkpoint)
	if err != nil {
		return Cosignature{}, err
	}
	select {
	case c.turn <- struct{}{}:
		defer func() { <-c.turn }()
	case <-ctx.Done():
		return Cosignature{}, fmt.Errorf("witness %s: %w", c.w.Name, ctx.Err())
	}
	reqCtx, cancel := context.WithTimeout(ctx, c.cfg.timeout)
	defer cancel()

	old, _ := c.KnownSize() // 0 when unknown: the witness's 409 tells
	if old > cp.Size {
		return Cosignature{}, c.ahead(old, cp.Size)
	}
	for range maxAttempts {
		var proof tlog.TreeProof
		if old > 0 && old < cp.Size {
			if proof, err = c.prove(reqCtx, old, cp.Size); err != nil {
				return Cosignature{}, fmt.Errorf("witness %s: consistency proof from %d to %d records: %w", c.w.Name, old, cp.Size, err)
			}
		}
		ans, err := c.post(reqCtx, old, proof, checkpoint)
		if err != nil {
			if ctx.Err() != nil { // the caller's end, not the witness's
				return Cosignature{}, fmt.Errorf("witness %s: %w", c.w.Name, ctx.Err())
			}
			return Cosignature{}, &Error{Witness: c.w.Name, Kind: ErrDown, Err: err}
		}
		if ans.status != http.StatusConflict {
			cosig, err := c.answer(ans, old, checkpoint, cp.Origin)
			if err == nil {
				c.setKnown(cp.Size)
			}
			return cosig, err
		}
		size, err := ans.size()
		if err != nil {
			return Cosignature{}, c.fail(ErrRefused, "409 Conflict: %v", err)
		}
		c.setKnown(size)
		switch {
		case size > cp.Size:
			return Cosignature{}, c.ahead(size, cp.Size)
		case size == cp.Size && old == cp.Size:
			return Cosignature{}, c.fail(ErrInconsistent, "it cosigned a different tree of the checkpoint's size %d (409 Conflict)", size)
		}
		old = size
	}
	return Cosignature{}, c.fail(ErrRefused, "its tree size changed under each of %d requests (another writer of this log cosigning at once?)", maxAttempts)
}

// ahead is the ErrInconsistent of a witness that holds a tree of size
// records, more than the checkpoint's want.
func (c *Client) ahead(size, want uint64) *Error {
	e := c.fail(ErrInconsistent, "it cosigned a tree of %d records, more than this checkpoint's %d", size, want)
	e.Ahead = size
	return e
}

func (c *Client) fail(kind error, format string, args ...any) *Error {
	return &Error{Witness: c.w.Name, Kind: kind, Err: fmt.Errorf(format, args...)}
}

// answer is a witness's HTTP answer.
type answer struct {
	status      int
	contentType string
	location    string
	body        []byte
}

// post makes one add-checkpoint request.
func (c *Client) post(ctx context.Context, old uint64, proof tlog.TreeProof, checkpoint []byte) (answer, error) {
	var body bytes.Buffer
	fmt.Fprintf(&body, "old %d\n", old)
	for _, h := range proof {
		body.WriteString(h.String())
		body.WriteByte('\n')
	}
	body.WriteByte('\n')
	body.Write(checkpoint)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, &body)
	if err != nil {
		return answer{}, err
	}
	resp, err := c.cfg.hc.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return answer{}, fmt.Errorf("%s: reading the answer: %w", resp.Status, err)
	}
	return answer{
		status:      resp.StatusCode,
		contentType: resp.Header.Get("Content-Type"),
		location:    resp.Header.Get("Location"),
		body:        data,
	}, nil
}

// size parses a 409 answer: the witness's tree size, in decimal.
func (a answer) size() (uint64, error) {
	if mt, _, err := mime.ParseMediaType(a.contentType); err != nil || mt != sizeContentType {
		return 0, fmt.Errorf("Content-Type %q, want %s", a.contentType, sizeContentType)
	}
	line, ok := strings.CutSuffix(string(a.body), "\n")
	n, err := strconv.ParseUint(line, 10, 64)
	if !ok || err != nil || line != strconv.FormatUint(n, 10) {
		return 0, fmt.Errorf("the body %s is not a tree size", shown(a.body))
	}
	return n, nil
}

// answer maps an answer other than 409 to the cosignature or an error.
func (c *Client) answer(a answer, old uint64, checkpoint []byte, origin string) (Cosignature, error) {
	switch s := a.status; {
	case s == http.StatusOK:
		return c.cosignature(a.body, checkpoint, origin)
	case s == http.StatusUnprocessableEntity:
		return Cosignature{}, c.fail(ErrInconsistent, "the consistency proof from %d records does not verify against the tree it holds (422: %s)", old, shown(a.body))
	case s == http.StatusForbidden || s == http.StatusNotFound:
		return Cosignature{}, c.fail(ErrMisconfigured, "it does not know this log's origin or key (%d: %s); add them to the witness", s, shown(a.body))
	case s >= 300 && s < 400:
		return Cosignature{}, c.fail(ErrMisconfigured, "it redirects to %q (%d): fix the witness's URL in the policy", a.location, s)
	case s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500:
		return Cosignature{}, c.fail(ErrDown, "%d %s: %s", s, http.StatusText(s), shown(a.body))
	default:
		return Cosignature{}, c.fail(ErrRefused, "%d %s: %s", s, http.StatusText(s), shown(a.body))
	}
}

// cosignature checks that a 200 answer holds a cosignature of checkpoint
// (of the log origin) by the witness's key, ignoring other signature lines
// as the protocol says, and returns it.
func (c *Client) cosignature(body, checkpoint []byte, origin string) (Cosignature, error) {
	if !bytes.HasPrefix(body, []byte("— ")) {
		return Cosignature{}, c.fail(ErrRefused, "200 without cosignature lines: %s", shown(body))
	}
	n, err := note.Open(append(bytes.Clone(checkpoint), body...), note.VerifierList(c.w.verifier))
	var unverified *note.UnverifiedNoteError
	var invalid *note.InvalidSignatureError
	switch {
	case errors.As(err, &unverified):
		var by []string
		for _, s := range unverified.Note.UnverifiedSigs {
			if s.Name != origin { // not the log's own signature
				by = append(by, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
			}
		}
		return Cosignature{}, c.fail(ErrMisconfigured, "no cosignature by the policy's key %s, only by %s: fix the key in the policy",
			c.w.VerifierKey(), strings.Join(by, ", "))
	case errors.As(err, &invalid):
		return Cosignature{}, c.fail(ErrMisconfigured, "its cosignature does not verify with the policy's key %s", c.w.VerifierKey())
	case err != nil:
		return Cosignature{}, c.fail(ErrRefused, "200 without cosignature lines (%v): %s", err, shown(body))
	}
	sig := n.Sigs[0] // the one verifier's; note.Open drops repeats
	ts, err := torchwood.CosignatureTimestamp(sig)
	if err != nil {
		return Cosignature{}, c.fail(ErrRefused, "cosignature: %v", err)
	}
	return Cosignature{
		Witness: c.w.Name,
		Time:    time.Unix(ts, 0),
		Line:    fmt.Sprintf("— %s %s\n", sig.Name, sig.Base64),
	}, nil
}

// shown quotes the start of an answer's body for an error message.
func shown(body []byte) string {
	if len(body) > maxShownBytes {
		return strconv.Quote(string(body[:maxShownBytes])) + "..."
	}
	return strconv.Quote(string(body))
}
