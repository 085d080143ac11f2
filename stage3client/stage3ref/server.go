package stage3ref

import (
	"fmt"
	"net"

	"google.golang.org/grpc"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
)

// Server is a running reference Stage-3: a grpc.Server serving a Service.
type Server struct {
	// Service is the executor being served, for faults and assertions.
	Service *Service
	// Addr is the listener's address, for example "127.0.0.1:41234".
	Addr string

	grpc     *grpc.Server
	served   chan struct{}
	serveErr error
}

// NewServer serves svc on a fresh loopback TCP port (127.0.0.1:0). opts are
// passed to grpc.NewServer, for example TLS credentials. Close stops it.
func NewServer(svc *Service, opts ...grpc.ServerOption) (*Server, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on loopback: %w", err)
	}
	return Serve(lis, svc, opts...), nil
}

// Serve serves svc on lis (a bufconn listener, a fixed port) until Close.
func Serve(lis net.Listener, svc *Service, opts ...grpc.ServerOption) *Server {
	s := &Server{
		Service: svc,
		Addr:    lis.Addr().String(),
		grpc:    grpc.NewServer(opts...),
		served:  make(chan struct{}),
	}
	stage3v1.RegisterStage3ServiceServer(s.grpc, svc)
	go func() {
		defer close(s.served)
		s.serveErr = s.grpc.Serve(lis)
	}()
	return s
}

// Close stops the server at once, cancelling calls in flight (a hanging call
// sees its context done), and returns the error that ended serving, if any.
func (s *Server) Close() error {
	s.grpc.Stop()
	<-s.served
	if s.serveErr != nil {
		return fmt.Errorf("serve stage3: %w", s.serveErr)
	}
	return nil
}
