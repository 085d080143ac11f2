package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"time"

	"google.golang.org/grpc"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
	"github.com/stage4/stage4/server"
	"github.com/stage4/stage4/stage3client"
)

// proxy is configuration (b): the floor any gateway pays. It serves
// Stage4Service.ExecutePlan by converting the plan and forwarding it with the
// same stage3client that stage4 uses, and does nothing else: no validation,
// no audit, no logging, no metrics, no interceptors.
type proxy struct {
	stage4v1.UnimplementedStage4ServiceServer

	stage3 *stage3client.Client
}

var _ stage4v1.Stage4ServiceServer = (*proxy)(nil)

// ExecutePlan forwards the plan once and returns Stage-3's result.
func (p *proxy) ExecutePlan(ctx context.Context, req *stage4v1.ExecutePlanRequest) (*stage4v1.ExecutePlanResponse, error) {
	res, err := p.stage3.Execute(ctx, server.ToStage3(req.GetPlan()))
	if err != nil {
		return nil, err
	}
	return &stage4v1.ExecutePlanResponse{Result: res}, nil
}

// serveProxy serves the pass-through proxy on lis until ctx is done.
func serveProxy(ctx context.Context, lis net.Listener, stage3Addr string) error {
	c, err := stage3client.New(stage3client.Config{Target: stage3Addr, Insecure: true})
	if err != nil {
		return fmt.Errorf("stage3 client: %w", err)
	}
	defer c.Close()
	srv := grpc.NewServer()
	stage4v1.RegisterStage4ServiceServer(srv, &proxy{stage3: c})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// The load tool stops the proxy between runs only; in-flight calls get a
	// moment, then are cut.
	t := time.AfterFunc(2*time.Second, srv.Stop)
	defer t.Stop()
	srv.GracefulStop()
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// runProxy is the hidden subcommand "stage4load proxy": the load tool spawns
// itself with it so that (b), like (c), runs in its own process and its CPU
// can be read from /proc.
func runProxy(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve Stage4Service on (loopback only)")
	stage3Addr := fs.String("stage3-addr", "", "Stage-3 address")
	pprofListen := fs.String("pprof-listen", "", "address to serve Go's runtime profiles on at /debug/pprof/ (loopback only); empty serves none")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *stage3Addr == "" {
		return errors.New("proxy: --stage3-addr is required")
	}
	if err := checkLoopback(*listen); err != nil {
		return err
	}
	if *pprofListen != "" {
		if err := checkLoopback(*pprofListen); err != nil {
			return err
		}
		plis, err := net.Listen("tcp", *pprofListen)
		if err != nil {
			return fmt.Errorf("listen pprof: %w", err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = hsrv.Serve(plis) }()
		defer hsrv.Close()
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return serveProxy(ctx, lis, *stage3Addr)
}
