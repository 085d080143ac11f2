package memstore

import (
	"golang.org/x/mod/sumdb/tlog"

	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/stage4/stage4/audit"
)

// "mem:NAME" locations: one Storage per NAME for the life of the process.
func init() { audit.Register(driver{}, "mem") }

var (
	namedMu sync.Mutex
	named   = map[string]*Storage{}
)

// Named returns the Storage that "mem:name" locations open, making it
// when it does not exist yet.
func Named(name string) *Storage {
	namedMu.Lock()
	defer namedMu.Unlock()
	st, ok := named[name]
	if !ok {
		st = NewStorage()
		named[name] = st
	}
	return st
}

type driver struct{}

func storageOf(loc audit.Location) (*Storage, error) {
	name := loc.URL.Opaque
	if name == "" {
		name = loc.URL.Host + loc.URL.Path
	}
	if name == "" {
		return nil, fmt.Errorf("%w: %s: a memory store needs a name (mem:NAME)", audit.ErrLocation, loc.Redacted())
	}
	return Named(name), nil
}

// Open opens a store on the named Storage.
func (driver) Open(_ context.Context, loc audit.Location, cfg audit.OpenConfig) (audit.Store, error) {
	st, err := storageOf(loc)
	if err != nil {
		return nil, err
	}
	return Open(st, cfg.ReplicaName), nil
}

// OpenReader reads the named Storage's durable records.
func (driver) OpenReader(_ context.Context, loc audit.Location) (audit.LogReader, error) {
	st, err := storageOf(loc)
	if err != nil {
		return nil, err
	}
	return reader{st}, nil
}

// Verify checks the named Storage's durable records as a chain.
func (driver) Verify(_ context.Context, loc audit.Location, cfg audit.VerifyConfig) (audit.VerifyReport, error) {
	st, err := storageOf(loc)
	if err != nil {
		return audit.VerifyReport{}, err
	}
	c := audit.NewChainChecker(cfg.Options...)
	res := audit.VerifyResult{LastHash: audit.GenesisHash}
	for _, r := range st.Records() {
		if _, err := c.Check(r.Line); err != nil {
			return audit.VerifyReport{Result: res}, err
		}
		res.Head = c.Head()
		res.Records, res.LastHash = res.Head.Sequence, audit.FormatHash(res.Head.Hash)
		res.Bytes += int64(len(r.Line)) + 1
	}
	return audit.VerifyReport{Result: res}, nil
}

type reader struct{ st *Storage }

func (r reader) Record(_ context.Context, seq uint64) ([]byte, error) {
	recs := r.st.Records()
	if seq == 0 || seq > uint64(len(recs)) {
		return nil, errors.New("no such record")
	}
	return recs[seq-1].Line, nil
}

func (r reader) ReadHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	s := Open(r.st, "reader")
	defer s.Close()
	return s.ReadHashes(ctx, indexes)
}

func (r reader) Close() error { return nil }
