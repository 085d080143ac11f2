package witness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stage4/stage4/audit"
)

// Cosigner asks every witness of a policy to cosign a log's checkpoints,
// all at once, and puts the cosignatures on the checkpoint when they meet
// the quorum. It is safe for concurrent use; its Cosign calls take turns,
// so that each witness sees the log's checkpoints in the order they are
// given.
type Cosigner struct {
	policy  *Policy
	clients []*Client // one per witness, in the policy's order
	turn    chan struct{}
}

// NewCosigner returns the Cosigner of the witnesses of p, each of which
// must have a URL; prove makes the log's consistency proofs (see
// HashProver). The options apply to every witness's Client.
func NewCosigner(p *Policy, prove Prover, opts ...Option) (*Cosigner, error) {
	c := &Cosigner{policy: p, turn: make(chan struct{}, 1)}
	for _, w := range p.witnesses {
		cl, err := NewClient(w, prove, opts...)
		if err != nil {
			return nil, err
		}
		c.clients = append(c.clients, cl)
	}
	return c, nil
}

// Policy returns the cosigner's policy.
func (c *Cosigner) Policy() *Policy { return c.policy }

// Outcome is what came of asking one witness, for metrics and logs.
type Outcome struct {
	// Witness is the witness's name.
	Witness string
	// Status is the kind of outcome: StatusOf(Err).
	Status Status
	// Err is nil when the witness cosigned; else an *Error, or an error
	// of Stage-4's side (StatusError).
	Err error
	// Cosignature is the witness's verified cosignature, when it cosigned.
	Cosignature Cosignature
	// Elapsed is how long the witness took, retries included.
	Elapsed time.Duration
}

// Result is what came of one Cosign.
type Result struct {
	// Checkpoint is the checkpoint with the cosignature lines appended
	// (the signed note's extra signatures, in the policy's order of the
	// witnesses); nil unless Cosign returned no error.
	Checkpoint []byte
	// Outcomes has one entry per witness of the policy, in its order.
	Outcomes []Outcome
}

// Cosigners returns the names of the witnesses that cosigned.
func (r *Result) Cosigners() []string {
	var names []string
	for _, o := range r.Outcomes {
		if o.Err == nil {
			names = append(names, o.Witness)
		}
	}
	return names
}

// Cosign asks every witness to cosign checkpoint, a checkpoint signed by
// the log (audit.SignCheckpoint), and waits for them all, each bounded by
// the timeout (WithTimeout). The Result has every witness's outcome; its
// Checkpoint is the cosigned checkpoint when err is nil. The error is
// ErrInconsistent (the witnesses' *Error joined) when any witness
// holds a tree the checkpoint does not extend, whatever the others said:
// the caller fails closed. Else it is ErrQuorumNotMet (joined likewise)
// when the cosignatures do not meet the quorum: the caller keeps serving
// its latest cosigned checkpoint and warns. Other errors: a malformed
// checkpoint, ctx ending before the turn of this call.
func (c *Cosigner) Cosign(ctx context.Context, checkpoint []byte) (*Result, error) {
	if _, err := audit.ParseCheckpoint(checkpoint); err != nil {
		return nil, err
	}
	select {
	case c.turn <- struct{}{}:
		defer func() { <-c.turn }()
	case <-ctx.Done():
		return nil, fmt.Errorf("cosign: %w", ctx.Err())
	}

	res := &Result{Outcomes: make([]Outcome, len(c.clients))}
	var wg sync.WaitGroup
	for i, cl := range c.clients {
		wg.Go(func() {
			start := time.Now()
			cosig, err := cl.AddCheckpoint(ctx, checkpoint)
			res.Outcomes[i] = Outcome{
				Witness:     cl.w.Name,
				Status:      StatusOf(err),
				Err:         err,
				Cosignature: cosig,
				Elapsed:     time.Since(start),
			}
		})
	}
	wg.Wait()

	var inconsistent, failed []error
	for _, o := range res.Outcomes {
		switch {
		case o.Status == StatusInconsistent:
			inconsistent = append(inconsistent, o.Err)
		case o.Err != nil:
			failed = append(failed, o.Err)
		}
	}
	if len(inconsistent) > 0 {
		return res, errors.Join(inconsistent...) // each is an *Error of Kind ErrInconsistent
	}
	if !c.policy.QuorumMet(res.Cosigners()) {
		notMet := fmt.Errorf("%w: %s is not met by the cosignatures of %v", ErrQuorumNotMet, c.policy.quorumOf, res.Cosigners())
		return res, errors.Join(append([]error{notMet}, failed...)...)
	}
	cosigned := append([]byte(nil), checkpoint...)
	for _, o := range res.Outcomes {
		if o.Err == nil {
			cosigned = append(cosigned, o.Cosignature.Line...)
		}
	}
	res.Checkpoint = cosigned
	return res, nil
}
