package stage3client

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
)

// HealthCheckMethod is the full name of the call Check makes, for
// interceptors that should leave it out (metrics of plan calls, say).
const HealthCheckMethod = "/grpc.health.v1.Health/Check"

// ErrNotServing is Check's error when Stage-3 answers that it does not
// serve.
var ErrNotServing = fmt.Errorf("stage3 reports NOT_SERVING")

// Check asks Stage-3, over the connection that plans take, whether it
// serves: grpc.health.v1 for stage3.v1.Stage3Service, or for the server as
// a whole when Stage-3's health service does not know that name. A
// Stage-3 without a health service answers Unimplemented, which shows that
// it is reachable, and Check takes that for serving. Otherwise the error is
// gRPC's (its message names the transport's failure: TLS, name resolution,
// a refused connection) or wraps ErrNotServing. A refusal of the health
// call itself (PermissionDenied, Unauthenticated: a mesh policy that
// allows plans only) shows that Stage-3 answers too.
//
// A connection in back-off after failed attempts is tried again at once
// (ClientConn.ResetConnectBackoff), so that a Stage-3 that is back is
// found by the next Check, and plans reach it from then on, instead of
// after gRPC's back-off of up to two minutes. The call itself fails fast
// rather than wait for a connection.
func (c *Client) Check(ctx context.Context) error {
	if c.conn.GetState() == connectivity.TransientFailure {
		c.conn.ResetConnectBackoff()
	}
	hc := healthpb.NewHealthClient(c.conn)
	res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: stage3v1.Stage3Service_ServiceDesc.ServiceName})
	if status.Code(err) == codes.NotFound {
		res, err = hc.Check(ctx, &healthpb.HealthCheckRequest{})
	}
	switch status.Code(err) {
	case codes.Unimplemented, codes.NotFound, codes.PermissionDenied, codes.Unauthenticated:
		// It answered: no health service, none for these names, or a
		// policy (a mesh's, say) that lets Stage-4 call plans but not
		// health. Reachable; whether a plan is let through is its answer.
		return nil
	}
	switch {
	case err != nil:
		return err
	case res.GetStatus() != healthpb.HealthCheckResponse_SERVING:
		return fmt.Errorf("%w (%s)", ErrNotServing, res.GetStatus())
	}
	return nil
}
