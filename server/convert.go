package server

import (
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stage4/stage4/audit"
	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

// eventToProto is an audit event as ListAuditEvents returns it. The event
// was read from a record that checked out, so its details are JSON values;
// one that is not fails as data loss rather than being served altered.
func eventToProto(ev *audit.Event) (*stage4v1.AuditEvent, error) {
	details, err := structpb.NewStruct(ev.Details)
	if err != nil {
		return nil, fmt.Errorf("%w: record %d: details: %w", audit.ErrDataLoss, ev.Sequence, err)
	}
	return &stage4v1.AuditEvent{
		Sequence:     ev.Sequence,
		Time:         timestamppb.New(ev.Time),
		Type:         stage4v1.AuditEventType(ev.Type),
		ExecutionId:  ev.ExecutionID,
		PlanId:       ev.PlanID,
		UserId:       ev.UserID,
		Details:      details,
		PreviousHash: ev.PreviousHash,
		Hash:         ev.Hash,
	}, nil
}
