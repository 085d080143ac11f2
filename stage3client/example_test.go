package stage3client_test

import (
	"context"
	"fmt"
	"log"

	"google.golang.org/protobuf/types/known/structpb"

	stage3v1 "github.com/stage4/stage4/gen/stage3/v1"
	"github.com/stage4/stage4/stage3client"
	"github.com/stage4/stage4/stage3client/stage3ref"
)

// Forward a plan to a reference Stage-3 on a loopback port.
func ExampleClient_Execute() {
	srv, err := stage3ref.NewServer(stage3ref.NewService())
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	client, err := stage3client.New(stage3client.Config{Target: srv.Addr, Insecure: true})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	params, err := structpb.NewStruct(map[string]any{"text": "hello"})
	if err != nil {
		log.Fatal(err)
	}
	resp, err := client.Execute(context.Background(), &stage3v1.ExecuteMultiDomainPlanRequest{
		UserId: "alice", TokenHash: "alice-token", TriggerType: "manual",
		Steps: []*stage3v1.Step{{Domain: "text", Method: "upper", Parameters: params}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetExecutionId(), resp.GetResults()[0].GetOutput().GetFields()["text"].GetStringValue())
	// Output: s3-1 HELLO
}
