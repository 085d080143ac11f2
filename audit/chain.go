package audit

import (
	"crypto/sha256"
	"fmt"
)

// ChainChecker checks records one by one in log order, from sequence 1
// (or after WithStart's head):
// each record's own hash, its sequence (gapless) and its previous_hash.
// It is the one verifier of every store: a file feeds it lines, a
// database rows ordered by sequence.
type ChainChecker struct {
	head Head
	cfg  verifyConfig
}

// NewChainChecker returns a checker that also calls the functions that
// opts set (WithRecordFunc, WithLineFunc) with every good record; the
// zero ChainChecker calls none. WithProgress is Verify's alone.
func NewChainChecker(opts ...VerifyOption) *ChainChecker {
	c := &ChainChecker{}
	for _, o := range opts {
		o(&c.cfg)
	}
	if c.cfg.start != nil {
		c.head = *c.cfg.start
	}
	return c
}

// Check verifies line (one record without its newline) as the next record
// of the chain. On success it returns the decoded event and advances; on
// failure it returns a *ChainError for the sequence the record should have
// had and stays where it was.
func (c *ChainChecker) Check(line []byte) (Event, error) {
	want := c.head.Sequence + 1
	ev, sum, reason := parseRecord(line)
	switch {
	case reason != "":
	case ev.Sequence < want && ev.Sequence > 0:
		reason = fmt.Sprintf("sequence gap: found sequence %d again (a duplicated or replayed record)", ev.Sequence)
	case ev.Sequence != want:
		reason = fmt.Sprintf("sequence gap: found sequence %d", ev.Sequence)
	case ev.PreviousHash != formatHash(&c.head.Hash):
		reason = "previous_hash does not match the hash of the record before (a fork or a changed record)"
	}
	if reason != "" {
		return Event{}, &ChainError{Sequence: want, Reason: reason}
	}
	c.head = Head{Sequence: want, Hash: sum}
	if c.cfg.onLine != nil {
		c.cfg.onLine(want, line)
	}
	if c.cfg.onRecord != nil {
		c.cfg.onRecord(&ev)
	}
	return ev, nil
}

// Head is the chain's end after the records checked so far.
func (c *ChainChecker) Head() Head { return c.head }

// ParseRecord checks that line (one record without its newline) carries the
// hash of its own bytes and decodes it. It does not check the record's
// place in a chain; ChainChecker does.
func ParseRecord(line []byte) (Event, [sha256.Size]byte, error) {
	ev, sum, reason := parseRecord(line)
	if reason != "" {
		return Event{}, sum, fmt.Errorf("%w: %s", ErrDataLoss, reason)
	}
	return ev, sum, nil
}

// FormatHash renders a hash as records carry it: "sha256:" and 64
// lowercase hex digits.
func FormatHash(sum [sha256.Size]byte) string { return formatHash(&sum) }

// ParseHash parses a hash as records carry it (FormatHash).
func ParseHash(s string) ([sha256.Size]byte, error) { return parseHash(s) }
