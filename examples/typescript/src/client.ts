// A Stage-4 client in TypeScript with connect-es: it executes a two-step
// plan (upper-case a text, then count its characters, the second step fed
// by a data binding), then lists the audit events of that execution.
//
// The call carries a request_id and is retried, with the same request_id,
// after UNAVAILABLE and ABORTED, with backoff: a retry can never run the
// plan twice (see the README's "Retries"). To show it, the client sends the
// call a second time, as if the first answer had been lost, and gets the
// first answer back, replayed.
//
//   npm ci && npm start                      # against make run (127.0.0.1:50051)
//   npm start -- --addr 127.0.0.1:8080       # elsewhere
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";

import { type MessageInitShape } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { AuditEventType, type ExecutePlanRequestSchema, Stage4Service } from "./gen/stage4/v1/stage4_pb.js";

const timeoutMs = 10_000;

// executeWithRetries sends req and sends it again, with its request_id,
// after UNAVAILABLE (nothing ran, or the connection was lost: the
// request_id makes the retry safe) and ABORTED (REQUEST_IN_PROGRESS: the
// first attempt still runs), with an exponential backoff and jitter, at
// most five attempts. It returns the response and its headers.
async function executeWithRetries(
  client: Client<typeof Stage4Service>,
  req: MessageInitShape<typeof ExecutePlanRequestSchema>,
) {
  let backoffMs = 200;
  for (let attempt = 1; ; attempt++) {
    let headers = new Headers();
    try {
      const res = await client.executePlan(req, { timeoutMs, onHeader: (h) => (headers = h) });
      return { res, headers };
    } catch (err) {
      const retryable = err instanceof ConnectError && (err.code === Code.Unavailable || err.code === Code.Aborted);
      if (!retryable || attempt === 5) {
        throw err;
      }
      await sleep(backoffMs / 2 + Math.random() * (backoffMs / 2));
      backoffMs = Math.min(2 * backoffMs, 5_000);
    }
  }
}

async function main(addr: string): Promise<void> {
  // Stage-4 speaks gRPC over HTTP/2; make run serves it in plaintext on
  // loopback. Behind TLS, use an https:// base URL.
  const transport = createGrpcTransport({ baseUrl: `http://${addr}` });
  const client = createClient(Stage4Service, transport);

  // One request_id per plan meant to run once, sent again with every
  // retry of it.
  const req: MessageInitShape<typeof ExecutePlanRequestSchema> = {
    requestId: randomUUID(),
    plan: {
      userId: "alice",
      tokenHash: "alice-token",
      triggerType: "manual",
      // google.protobuf.Struct fields are plain JSON objects in protobuf-es.
      steps: [
        { domain: "text", method: "upper", parameters: { text: "hello from typescript" } },
        { domain: "text", method: "length", parameters: {} },
      ],
      dataBindings: [{ sourceStep: 0, sourceOutput: "text", targetStep: 1, targetParameter: "text" }],
    },
  };
  const { res } = await executeWithRetries(client, req);
  console.log(`executed ${res.executionId} (plan ${res.planId})`);
  // result is a message field, so it may be absent as far as the types go;
  // Stage-4 always sets it on success.
  for (const step of res.result?.results ?? []) {
    console.log(`step ${step.stepIndex} ${step.domain}.${step.method}: ${JSON.stringify(step.output ?? {})}`);
  }

  // The same call again, as after a lost answer: Stage-4 answers from the
  // first execution and runs nothing.
  const again = await executeWithRetries(client, req);
  console.log(
    `retried ${req.requestId}: replayed ${again.res.executionId} (x-stage4-replayed: [${again.headers.get("x-stage4-replayed") ?? ""}])`,
  );

  const events = await client.listAuditEvents({ executionId: res.executionId }, { timeoutMs });
  for (const event of events.auditEvents) {
    console.log(`audit ${event.sequence} ${AuditEventType[event.type]}`);
  }
}

const { values } = parseArgs({
  options: { addr: { type: "string", default: "127.0.0.1:50051" } },
});

try {
  await main(values.addr ?? "127.0.0.1:50051");
} catch (err) {
  // Every Stage-4 error is a gRPC status; its ErrorInfo reason (see the
  // README's error table) travels in err.details.
  if (err instanceof ConnectError) {
    console.error(`stage4: ${Code[err.code]}: ${err.rawMessage}`);
  } else {
    console.error(err);
  }
  process.exitCode = 1;
}
