package audit

import (
	"fmt"
	"time"
)

// RenderRecords renders events as the records that follow head, all with
// time t: sequences head.Sequence+1, +2, ..., each chained to the one
// before, with the tree hashes that grow head.Tree (which must be the
// edge of head.Sequence leaves). The events' own sequence, time and hash
// members are ignored.
// Stores and their tests use it to make records exactly as a Log would;
// OpenUntil is left zero.
func RenderRecords(head Head, t time.Time, events []Event) ([]Record, error) {
	tree, err := newTreeEdge(int64(head.Sequence), head.Tree)
	if err != nil {
		return nil, fmt.Errorf("resume the audit tree: %w", err)
	}
	recs := make([]Record, len(events))
	var buf []byte
	for i := range events {
		ev := &events[i]
		fields, err := encodeFields(nil, ev)
		if err != nil {
			return nil, fmt.Errorf("encode audit event: %w", err)
		}
		start := len(buf)
		seq := head.Sequence + 1
		buf, head.Hash = appendRecord(buf, seq, t, fields, &head.Hash)
		head.Sequence = seq
		recs[i] = newRecord(buf[start:len(buf)-1], head, t, ev)
		if recs[i].TreeHashes, err = tree.add(recs[i].Line); err != nil {
			return nil, fmt.Errorf("audit tree: %w", err)
		}
	}
	return recs, nil
}

// newRecord describes the rendered line of ev, which is now the head.
func newRecord(line []byte, head Head, t time.Time, ev *Event) Record {
	return Record{
		Line:        line,
		Sequence:    head.Sequence,
		Hash:        head.Hash,
		Time:        t,
		Type:        ev.Type,
		ExecutionID: ev.ExecutionID,
		PlanID:      ev.PlanID,
		UserID:      ev.UserID,
		Request:     terminalRequest(ev),
	}
}

// terminalRequest is ev's Request when ev is terminal: only the end of an
// execution settles its key.
func terminalRequest(ev *Event) *RequestOutcome {
	if !ev.Type.Terminal() {
		return nil
	}
	return ev.Request
}
