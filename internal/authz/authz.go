// Package authz decides who may read the audit log over RPC. The audit log
// names every user, peer and token fingerprint, so its reading methods are
// denied to every caller unless the caller's verified client certificate
// carries an identity on the readers list, or the list is "*" (a mesh that
// enforces its own policy in front of Stage-4).
package authz

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/internal/identity"
	"github.com/stage4/stage4/internal/rpcerr"
)

// AuditReadMethods are the full names of the RPCs that read the audit log,
// the methods UnaryServerInterceptor protects by default. Every RPC added
// later that returns audit events or proofs over them belongs here.
var AuditReadMethods = []string{
	stage4v1.Stage4Service_ListAuditEvents_FullMethodName,
	stage4v1.Stage4Service_GetCheckpoint_FullMethodName,
	stage4v1.Stage4Service_GetInclusionProof_FullMethodName,
	stage4v1.Stage4Service_GetConsistencyProof_FullMethodName,
}

// deniedLogMsg is the warning for a denied call; ratelog limits it as one
// message, whoever the caller.
const deniedLogMsg = "audit read denied"

// UnaryServerInterceptor refuses the protected methods (AuditReadMethods
// unless WithMethods says otherwise) with PERMISSION_DENIED and reason
// AUDIT_READ_DENIED to every caller that readers does not allow, and passes
// every other call through. readers is required: its zero value allows
// nobody, which is the safe default.
func UnaryServerInterceptor(readers Readers, opts ...Option) grpc.UnaryServerInterceptor {
	c := config{methods: AuditReadMethods}
	for _, o := range opts {
		o(&c)
	}
	protected := make(map[string]bool, len(c.methods))
	for _, m := range c.methods {
		protected[m] = true
	}
	denied := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "stage4", Subsystem: "authz", Name: "denied_total",
		Help: "Calls refused because the caller may not read the audit log, by method.",
	}, []string{"grpc_method"})
	if c.registerer != nil {
		c.registerer.MustRegister(denied)
	}
	for _, m := range c.methods {
		denied.WithLabelValues(m) // exported as 0 from the start, so rate() works
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !protected[info.FullMethod] {
			return handler(ctx, req)
		}
		p, _ := peer.FromContext(ctx)
		id, _ := identity.FromPeer(p)
		if readers.allows(id) {
			return handler(ctx, req)
		}
		denied.WithLabelValues(info.FullMethod).Inc()
		if c.log != nil {
			var addr string
			if p != nil && p.Addr != nil {
				addr = p.Addr.String()
			}
			c.log.Log(ctx, deniedLogMsg, "grpc.method", info.FullMethod, "peer.address", addr,
				"peer.uri_sans", id.URIs, "peer.dns_sans", id.DNSNames)
		}
		return nil, rpcerr.New(codes.PermissionDenied, rpcerr.AuditReadDenied,
			"this caller may not read the audit log: it needs a client certificate with an identity on the server's readers list", nil)
	}
}
