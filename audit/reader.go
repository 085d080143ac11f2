package audit

import (
	"context"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// Paging limits of List.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// ErrInvalidQuery: a List request that breaks its rules, such as a page
// size out of range.
var ErrInvalidQuery = fmt.Errorf("invalid audit query")

// List returns a page of events in sequence order that pass f: pageSize
// of them at most (0 means DefaultPageSize), from the position pageToken
// names (a token List returned for the same filter, or "" for the first
// page), and the token of the next page, "" when there is none. Tokens
// are bound to the log and the filter under a MAC (see pageTokens), so
// that every replica of one store honours them and nothing else does.
func (l *Log) List(ctx context.Context, f Filter, pageSize int, pageToken string) ([]Event, string, error) {
	if pageSize < 0 || pageSize > MaxPageSize {
		return nil, "", fmt.Errorf("%w: page_size must be between 0 and %d", ErrInvalidQuery, MaxPageSize)
	}
	if pageSize == 0 {
		pageSize = DefaultPageSize
	}
	if !f.Type.Defined() {
		return nil, "", fmt.Errorf("%w: type is not a defined AuditEventType", ErrInvalidQuery)
	}
	q := Query{Filter: f, Limit: pageSize, MaxScanned: l.cfg.maxScanned}
	if pageToken != "" {
		c, err := l.tokens.decode(&f, pageToken)
		if err != nil {
			return nil, "", err
		}
		q.From = c
	}
	if l.isClosed() {
		return nil, "", ErrClosed
	}
	page, err := l.store.List(ctx, q)
	if err != nil {
		return nil, "", err
	}
	var next string
	if !page.Done() {
		next = l.tokens.encode(&f, page.Next)
	}
	return page.Events, next, nil
}

// Tree returns the tree over the log's durable records: the largest tree
// a checkpoint may be signed for, and for which proofs can be made.
func (l *Log) Tree(ctx context.Context) (TreeHead, error) {
	if l.isClosed() {
		return TreeHead{}, ErrClosed
	}
	head, err := l.store.DurableHead(ctx)
	if err != nil {
		return TreeHead{}, fmt.Errorf("durable audit tree: %w", err)
	}
	root, err := TreeRoot(int64(head.Sequence), head.Tree)
	if err != nil {
		return TreeHead{}, fmt.Errorf("%w: durable audit tree: %w", ErrDataLoss, err)
	}
	return TreeHead{Size: head.Sequence, Root: root}, nil
}

// ReadHashes returns the tree's stored hashes at indexes, of durable
// records only (see Store.ReadHashes).
func (l *Log) ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	if l.isClosed() {
		return nil, ErrClosed
	}
	return l.store.ReadHashes(ctx, indexes)
}

// hashReader is the tlog.HashReader of the log's durable tree; ctx bounds
// its reads.
func (l *Log) hashReader(ctx context.Context) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		return l.ReadHashes(ctx, indexes)
	})
}

// Checkpoint returns the latest signed checkpoint, whichever process of
// the store signed it: ErrNoSigningKey without a signing key,
// ErrNoCheckpoint before the first. With a Cosigner it is the latest
// checkpoint that met the witnesses' quorum, with their cosignatures, and
// never one that did not (ErrNoCheckpoint until the first did).
func (l *Log) Checkpoint(ctx context.Context) ([]byte, error) {
	if len(l.cfg.keys) == 0 {
		return nil, ErrNoSigningKey
	}
	if l.isClosed() {
		return nil, ErrClosed
	}
	if l.cfg.cosigner != nil {
		return l.store.LoadCosigned(ctx)
	}
	return l.store.LoadCheckpoint(ctx)
}
