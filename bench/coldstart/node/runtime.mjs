// A small Lambda Runtime API client, standing in for the managed Node.js 20 runtime (which is
// not available outside Lambda): like it, it loads the handler module during init, then
// loops on GET /runtime/invocation/next and POSTs each result to .../response (or .../error),
// over one keep-alive connection. Usage: node runtime.mjs [module.mjs] (default ./index.mjs).
import http from "node:http";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [host, port] = process.env.AWS_LAMBDA_RUNTIME_API.split(":");
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const base = "/2018-06-01/runtime";

function request(method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(body);
    const req = http.request(
      { host, port, method, path: base + p, agent, headers: data ? { "content-type": "application/json", "content-length": data.length } : {} },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.on("error", reject);
    if (data) req.write(data);
    req.end();
  });
}

const errorBody = (e) => JSON.stringify({ errorType: e?.name ?? "Error", errorMessage: String(e?.message ?? e) });

let handler;
try {
  const file = path.resolve(process.env.LAMBDA_TASK_ROOT ?? ".", process.argv[2] ?? "index.mjs");
  handler = (await import(pathToFileURL(file).href)).handler;
} catch (e) {
  await request("POST", "/init/error", errorBody(e));
  process.exit(1);
}

for (;;) {
  const next = await request("GET", "/invocation/next");
  const id = next.headers["lambda-runtime-aws-request-id"];
  try {
    const result = await handler(JSON.parse(next.body), { awsRequestId: id });
    await request("POST", `/invocation/${id}/response`, JSON.stringify(result ?? null));
  } catch (e) {
    await request("POST", `/invocation/${id}/error`, errorBody(e));
  }
}
