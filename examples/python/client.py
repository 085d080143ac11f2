"""A Stage-4 client in Python with grpcio.

It executes a two-step plan (upper-case a text, then count its characters,
the second step fed by a data binding), then lists the audit events of that
execution.

The call carries a request_id and is retried, with the same request_id,
after UNAVAILABLE and ABORTED, with backoff: a retry can never run the plan
twice (see the README's "Retries"). To show it, the client sends the call a
second time, as if the first answer had been lost, and gets the first answer
back, replayed.

The stubs in gen/ are generated from proto/ with grpc_tools;
make example-python generates them and runs this file against make run:

    make example-python                      # against 127.0.0.1:50051
    make example-python ADDR=127.0.0.1:8080  # elsewhere
"""

import argparse
import os
import random
import sys
import time
import uuid

# The generated modules import each other by their proto paths
# (stage4.v1 imports stage3.v1 and buf.validate), so gen/ is a root.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402
from google.protobuf import json_format, struct_pb2  # noqa: E402

from stage4.v1 import stage4_pb2, stage4_pb2_grpc  # noqa: E402


def struct(values):
    """Returns a google.protobuf.Struct holding the JSON object values."""
    s = struct_pb2.Struct()
    s.update(values)
    return s


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)


def execute_with_retries(client, request):
    """Sends request, and again, with its request_id, after UNAVAILABLE
    (nothing ran, or the connection was lost: the request_id makes the retry
    safe) and ABORTED (REQUEST_IN_PROGRESS: the first attempt still runs),
    with an exponential backoff and jitter, at most five attempts. Returns
    the response and its initial metadata (the headers)."""
    backoff = 0.2
    for attempt in range(1, 6):
        try:
            response, call = client.ExecutePlan.with_call(request, timeout=10)
            return response, dict(call.initial_metadata())
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE or attempt == 5:
                raise
            time.sleep(backoff / 2 + random.random() * backoff / 2)
            backoff = min(2 * backoff, 5.0)


def run(addr):
    # make run serves plaintext on loopback; behind TLS, use
    # grpc.secure_channel with grpc.ssl_channel_credentials().
    with grpc.insecure_channel(addr) as channel:
        client = stage4_pb2_grpc.Stage4ServiceStub(channel)
        plan = stage4_pb2.Plan(
            user_id="alice",
            token_hash="alice-token",
            trigger_type="manual",
            steps=[
                stage4_pb2.Step(domain="text", method="upper", parameters=struct({"text": "hello from python"})),
                stage4_pb2.Step(domain="text", method="length", parameters=struct({})),
            ],
            data_bindings=[
                stage4_pb2.DataBinding(source_step=0, source_output="text", target_step=1, target_parameter="text"),
            ],
        )
        # One request_id per plan meant to run once, sent again with every
        # retry of it.
        request = stage4_pb2.ExecutePlanRequest(request_id=str(uuid.uuid4()), plan=plan)
        res, _ = execute_with_retries(client, request)
        print(f"executed {res.execution_id} (plan {res.plan_id})")
        for step in res.result.results:
            output = json_format.MessageToJson(step.output, indent=None)
            print(f"step {step.step_index} {step.domain}.{step.method}: {output}")

        # The same call again, as after a lost answer: Stage-4 answers from
        # the first execution and runs nothing.
        again, headers = execute_with_retries(client, request)
        replayed = headers.get("x-stage4-replayed", "")
        print(f"retried {request.request_id}: replayed {again.execution_id} (x-stage4-replayed: [{replayed}])")

        events = client.ListAuditEvents(
            stage4_pb2.ListAuditEventsRequest(execution_id=res.execution_id), timeout=10
        )
        for event in events.audit_events:
            print(f"audit {event.sequence} {stage4_pb2.AuditEventType.Name(event.type)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="host:port of Stage-4 (make run: 127.0.0.1:50051)")
    args = parser.parse_args()
    try:
        run(args.addr)
    except grpc.RpcError as err:
        # Every Stage-4 error is a gRPC status; its ErrorInfo reason (see the
        # README's error table) travels in the grpc-status-details-bin trailer.
        print(f"stage4: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
