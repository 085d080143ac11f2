package memstore

import (
	"context"
	"slices"
	"time"

	"github.com/stage4/stage4/audit"
)

// requests are the keys of idempotent executions on a Storage, guarded by
// its mu. A claim is durable at once: a crash keeps it (stronger than the
// rule, which asks for it by the next durable append).
type requests struct {
	byKey  map[audit.RequestKey]*audit.Request
	byExec map[string]audit.RequestKey // running claims
}

func (r *requests) init() {
	if r.byKey == nil {
		r.byKey = map[audit.RequestKey]*audit.Request{}
		r.byExec = map[string]audit.RequestKey{}
	}
}

// ClaimRequest claims req.Key unless a live claim holds it.
func (s *Store) ClaimRequest(ctx context.Context, req audit.Request, since time.Time) (audit.Request, bool, error) {
	if err := s.enter(ctx, true); err != nil {
		return audit.Request{}, false, err
	}
	defer s.st.mu.Unlock()
	rq := &s.st.requests
	rq.init()
	if held, ok := rq.byKey[req.Key]; ok && !s.replaceable(held, since) {
		return cloneRequest(held), false, nil
	}
	if held, ok := rq.byKey[req.Key]; ok {
		delete(rq.byExec, held.ExecutionID)
	}
	req.State, req.Answer = audit.RequestRunning, nil
	rq.byKey[req.Key] = &req
	rq.byExec[req.ExecutionID] = req.Key
	return req, true, nil
}

// replaceable reports whether a held claim is forgotten: claimed before
// since, or running past its OpenUntil with its execution not open (it
// never reached the log). The caller holds st.mu.
func (s *Store) replaceable(held *audit.Request, since time.Time) bool {
	if held.Claimed.Before(since) {
		return true
	}
	if held.State != audit.RequestRunning || !time.Now().After(held.OpenUntil) {
		return false
	}
	_, open := s.st.open[held.ExecutionID]
	return !open
}

// ReleaseRequest forgets key if executionID holds it running.
func (s *Store) ReleaseRequest(ctx context.Context, key audit.RequestKey, executionID string) error {
	if err := s.enter(ctx, true); err != nil {
		return err
	}
	defer s.st.mu.Unlock()
	rq := &s.st.requests
	rq.init()
	if held, ok := rq.byKey[key]; ok && held.ExecutionID == executionID && held.State == audit.RequestRunning {
		delete(rq.byKey, key)
		delete(rq.byExec, executionID)
	}
	return nil
}

// PurgeRequests removes the keys claimed before before.
func (s *Store) PurgeRequests(ctx context.Context, before time.Time) error {
	if err := s.enter(ctx, true); err != nil {
		return err
	}
	defer s.st.mu.Unlock()
	rq := &s.st.requests
	rq.init()
	for k, r := range rq.byKey {
		if r.Claimed.Before(before) {
			delete(rq.byKey, k)
			if rq.byExec[r.ExecutionID] == k {
				delete(rq.byExec, r.ExecutionID)
			}
		}
	}
	return nil
}

// settle applies a stored terminal record's Request to the running claim
// of its execution. The caller holds st.mu.
func (s *Store) settle(r *audit.Record) {
	if r.Request == nil || !r.Terminal() {
		return
	}
	rq := &s.st.requests
	rq.init()
	key, ok := rq.byExec[r.ExecutionID]
	if !ok {
		return
	}
	delete(rq.byExec, r.ExecutionID)
	held := rq.byKey[key]
	switch {
	case r.Request.Release:
		delete(rq.byKey, key)
	case r.Request.Answer != nil:
		held.State, held.Answer = audit.RequestDone, slices.Clone(r.Request.Answer)
	default:
		held.State = audit.RequestUnknown
	}
}

func cloneRequest(r *audit.Request) audit.Request {
	c := *r
	c.Answer = slices.Clone(r.Answer)
	return c
}
