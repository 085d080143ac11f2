// A Stage-4 client in TypeScript with connect-es: it executes a two-step
// plan (upper-case a text, then count its characters, the second step fed
// by a data binding), then lists the audit events of that execution.
//
//   npm ci && npm start                      # against make run (127.0.0.1:50051)
//   npm start -- --addr 127.0.0.1:8080       # elsewhere
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { parseArgs } from "node:util";

import { AuditEventType, Stage4Service } from "./gen/stage4/v1/stage4_pb.js";

async function main(addr: string): Promise<void> {
  // Stage-4 speaks gRPC over HTTP/2; make run serves it in plaintext on
  // loopback. Behind TLS, use an https:// base URL.
  const transport = createGrpcTransport({ baseUrl: `http://${addr}` });
  const client = createClient(Stage4Service, transport);
  const timeoutMs = 10_000;

  const res = await client.executePlan(
    {
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
    },
    { timeoutMs },
  );
  console.log(`executed ${res.executionId} (plan ${res.planId})`);
  // result is a message field, so it may be absent as far as the types go;
  // Stage-4 always sets it on success.
  for (const step of res.result?.results ?? []) {
    console.log(`step ${step.stepIndex} ${step.domain}.${step.method}: ${JSON.stringify(step.output ?? {})}`);
  }

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
