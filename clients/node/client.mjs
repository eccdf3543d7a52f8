#!/usr/bin/env node
// Example ATP client for Node.js: ListModels, Complete and Stream over the typed gRPC API, with
// stubs generated at run time from proto/atp/v1/atp.proto (no CBOR, no frame protocol needed).
//
//   node client.mjs [target] [prompt]     target: argv, else ATP_GRPC_TARGET, else 127.0.0.1:8471
//   ATP_API_KEY=...                       API key (required: there is no built-in default)
//
// Prints one JSON object per line; on any failure prints {"error": ...} to stderr and exits 1.
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROTO = path.resolve(here, "../../proto/atp/v1/atp.proto");
const target = process.argv[2] || process.env.ATP_GRPC_TARGET || "127.0.0.1:8471";
const prompt = process.argv[3] || "Say hello to the Node.js client.";
const apiKey = process.env.ATP_API_KEY;
if (!apiKey) {
  console.error(JSON.stringify({ error: { message: "set ATP_API_KEY (e.g. the dev server's sk-atp-dev)" } }));
  process.exit(1);
}
const DEADLINE_MS = 15_000;

const definition = protoLoader.loadSync(PROTO, {
  keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const { Atp } = grpc.loadPackageDefinition(definition).atp.v1;
const client = new Atp(target, grpc.credentials.createInsecure());

function metadata() {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${apiKey}`);
  return md;
}

const deadline = () => ({ deadline: Date.now() + DEADLINE_MS });

// A gRPC failure with the exact ATP wire error the server put in the trailing metadata.
function atpError(rpc, err) {
  const get = (k) => (err.metadata ? err.metadata.get(k)[0] : undefined);
  const code = get("atp-error-code");
  return Object.assign(new Error(`${rpc}: ${err.details || err.message}`), {
    rpc, grpc_status: err.code, details: err.details,
    atp_code: code === undefined ? null : Number(code), atp_name: get("atp-error-name") ?? null,
    retryable: get("atp-retryable") === "true",
  });
}

function unary(rpc, request) {
  // Settles once both the callback and the status (trailing metadata) have arrived, in any order.
  return new Promise((resolve, reject) => {
    let result = null;
    let status = null;
    const settle = () => {
      if (!result || !status) return;
      if (result.err) reject(atpError(rpc, result.err));
      else resolve({ response: result.response, trailing: status.metadata.getMap() });
    };
    const call = client[rpc](request, metadata(), deadline(), (err, response) => {
      result = { err, response };
      settle();
    });
    call.on("status", (s) => { status = s; settle(); });
  });
}

function stream(request, onEvent) {
  return new Promise((resolve, reject) => {
    const call = client.Stream(request, metadata(), deadline());
    call.on("data", onEvent);
    call.on("error", (err) => reject(atpError("Stream", err)));
    call.on("status", (s) => { if (s.code === grpc.status.OK) resolve(s.metadata.getMap()); });
  });
}

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

async function main() {
  const models = await unary("ListModels", {});
  out({ rpc: "ListModels", models: models.response.models });

  const request = {
    messages: [{ role: "user", content: prompt }], tier: "QUALITY_TIER_FAST", max_tokens: 16,
    request_id: `node-${process.pid}-${Date.now()}`, metadata: { client: "node" },
  };
  const done = await unary("Complete", request);
  out({ rpc: "Complete", ...done.response, overhead_us_header: Number(done.trailing["atp-overhead-us"]) });

  let terminal = null;
  const trailing = await stream({ ...request, request_id: `${request.request_id}-s` }, (ev) => {
    const kind = ev.event;          // oneof name: route | chunk | end | error
    out({ rpc: "Stream", event: kind, data: ev[kind] });
    if (kind === "end" || kind === "error") terminal = ev;
  });
  if (!terminal || terminal.event !== "end") {
    const e = terminal ? terminal.error : { message: "stream ended without a terminal event" };
    throw Object.assign(new Error(`Stream: ${e.message}`), { atp_code: e.code ?? null, atp_name: e.name ?? null });
  }
  out({ rpc: "Stream", event: "trailers", request_id: trailing["atp-request-id"],
        overhead_us: Number(trailing["atp-overhead-us"]) });
}

main().then(() => { client.close(); }, (err) => {
  process.stderr.write(JSON.stringify({ error: { message: err.message, rpc: err.rpc ?? null,
    grpc_status: err.grpc_status ?? null, atp_code: err.atp_code ?? null, atp_name: err.atp_name ?? null,
    retryable: err.retryable ?? false } }) + "\n");
  client.close();
  process.exitCode = 1;
});
