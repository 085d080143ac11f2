// Binary client is a Stage-4 client in Go, with the generated client of
// gen/stage4/v1: it executes a two-step plan (upper-case a text, then count
// its characters, the second step fed by a data binding), then lists the
// audit events of that execution.
//
// The call carries a request_id and is retried, with the same request_id,
// after UNAVAILABLE and ABORTED, with backoff: a retry can never run the
// plan twice (see the README's "Retries"). To show it, the client sends the
// call a second time, as if the first answer had been lost, and gets the
// first answer back, replayed.
//
//	go run ./examples/go                          # against make run (127.0.0.1:50051)
//	go run ./examples/go --addr 127.0.0.1:8080    # elsewhere
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"time"

	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	stage4v1 "github.com/stage4/stage4/gen/stage4/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "`host:port` of Stage-4 (make run listens on 127.0.0.1:50051)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *addr, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "stage4:", err)
		os.Exit(1)
	}
}

// run executes the plan at addr and prints the result and the audit events.
func run(ctx context.Context, addr string, out io.Writer) error {
	// make run serves plaintext on loopback; behind TLS, use
	// credentials.NewTLS instead.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := stage4v1.NewStage4ServiceClient(conn)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	params, err := structpb.NewStruct(map[string]any{"text": "hello from go"})
	if err != nil {
		return err
	}
	// One request_id per plan meant to run once, sent again with every
	// retry of it.
	req := &stage4v1.ExecutePlanRequest{RequestId: uuid.NewString(), Plan: &stage4v1.Plan{
		UserId:      "alice",
		TokenHash:   "alice-token",
		TriggerType: "manual",
		Steps: []*stage4v1.Step{
			{Domain: "text", Method: "upper", Parameters: params},
			{Domain: "text", Method: "length", Parameters: &structpb.Struct{}},
		},
		DataBindings: []*stage4v1.DataBinding{
			{SourceStep: 0, SourceOutput: "text", TargetStep: 1, TargetParameter: "text"},
		},
	}}
	res, _, err := executeWithRetries(ctx, client, req)
	if err != nil {
		return describe(err)
	}
	fmt.Fprintf(out, "executed %s (plan %s)\n", res.GetExecutionId(), res.GetPlanId())
	for _, step := range res.GetResult().GetResults() {
		output, err := protojson.Marshal(step.GetOutput())
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "step %d %s.%s: %s\n", step.GetStepIndex(), step.GetDomain(), step.GetMethod(), output)
	}

	// The same call again, as after a lost answer: Stage-4 answers from
	// the first execution and runs nothing.
	again, header, err := executeWithRetries(ctx, client, req)
	if err != nil {
		return describe(err)
	}
	fmt.Fprintf(out, "retried %s: replayed %s (x-stage4-replayed: %v)\n", req.GetRequestId(), again.GetExecutionId(), header.Get("x-stage4-replayed"))

	events, err := client.ListAuditEvents(ctx, &stage4v1.ListAuditEventsRequest{ExecutionId: res.GetExecutionId()})
	if err != nil {
		return describe(err)
	}
	for _, e := range events.GetAuditEvents() {
		fmt.Fprintf(out, "audit %d %s\n", e.GetSequence(), e.GetType())
	}
	return nil
}

// executeWithRetries sends req and sends it again, with its request_id,
// after UNAVAILABLE (nothing ran, or the connection was lost: the
// request_id makes the retry safe) and ABORTED (REQUEST_IN_PROGRESS: the
// first attempt still runs), waiting the RetryInfo's delay or an
// exponential backoff with jitter, until ctx ends or after five attempts.
// It returns the last answer and its headers.
func executeWithRetries(ctx context.Context, client stage4v1.Stage4ServiceClient, req *stage4v1.ExecutePlanRequest) (*stage4v1.ExecutePlanResponse, metadata.MD, error) {
	const attempts = 5
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		var header metadata.MD
		res, err := client.ExecutePlan(ctx, req, grpc.Header(&header))
		code := status.Code(err)
		if code != codes.Unavailable && code != codes.Aborted || attempt == attempts {
			return res, header, err
		}
		delay := backoff/2 + rand.N(backoff/2+1)
		for _, d := range status.Convert(err).Details() {
			if info, ok := d.(*errdetails.RetryInfo); ok {
				delay = info.GetRetryDelay().AsDuration()
			}
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, header, err
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// describe adds the ErrorInfo reason that every Stage-4 error carries (see
// the README's error table): it, not the message, says whether a retry is
// safe.
func describe(err error) error {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return fmt.Errorf("%s (reason %s): %s", st.Code(), info.GetReason(), st.Message())
		}
	}
	return fmt.Errorf("%s: %s", st.Code(), st.Message())
}
