package audit

import (
	"fmt"
	"time"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// RenderRecords renders events as the records that extend head, all with
// time t: sequences head.Sequence+1, +2, …, each previous_hash the hash of
// the record before. It is what a Store's build function returns, for code
// that makes records outside a Log (store tests, tools). OpenUntil is left
// zero; the Log sets it on the events that open an execution.
func RenderRecords(head Head, t time.Time, events []*stage4v1.AuditEvent) ([]Record, error) {
	recs := make([]Record, len(events))
	prev := head.Hash
	t = t.UTC()
	for i, ev := range events {
		fields, err := encodeFields(make([]byte, 0, 512), ev)
		if err != nil {
			return nil, fmt.Errorf("encode audit event: %w", err)
		}
		if len(fields) > maxFieldsBytes {
			return nil, fmt.Errorf("encode audit event: larger than %d bytes", maxFieldsBytes)
		}
		seq := head.Sequence + uint64(i) + 1
		line, sum := appendRecord(nil, seq, t, fields, &prev)
		recs[i] = Record{
			Line:        line[:len(line)-1], // a Record carries no newline
			Sequence:    seq,
			Hash:        sum,
			Time:        t,
			Type:        ev.GetType(),
			ExecutionID: ev.GetExecutionId(),
			PlanID:      ev.GetPlanId(),
			UserID:      ev.GetUserId(),
		}
		prev = sum
	}
	return recs, nil
}
