// The widget ingress job in Node.js 20 with the AWS SDK v3, for the cold-start comparison:
// both clients are built at init (module load), like Baton's `from_env()`; each invoke
// parses the API Gateway HTTP API (v2) event, reads the agent (GetItem) and queues the
// message on the events FIFO queue (SendMessage), as `POST /api/widget/{agent}/messages` does.
import { DynamoDBClient, GetItemCommand } from "@aws-sdk/client-dynamodb";
import { SQSClient, SendMessageCommand } from "@aws-sdk/client-sqs";
import { createHash, randomUUID } from "node:crypto";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is not set`);
  return v;
};
const TABLE = env("BATON_TABLE");
const EVENTS_QUEUE_URL = env("BATON_EVENTS_QUEUE_URL");
const dynamo = new DynamoDBClient({});
const sqs = new SQSClient({});

const json = (statusCode, body) => ({
  statusCode,
  headers: { "content-type": "application/json" },
  body: JSON.stringify(body),
});

export const handler = async (event) => {
  const agent = event.pathParameters?.agent ?? event.pathParameters?.id ?? "demo";
  if (!/^[a-z0-9_-]{1,64}$/.test(agent)) return json(400, { error: "invalid_agent" });
  let text = "hello";
  if (event.body) {
    const raw = event.isBase64Encoded ? Buffer.from(event.body, "base64").toString() : event.body;
    try {
      text = JSON.parse(raw).text ?? text;
    } catch {
      return json(400, { error: "invalid_json" });
    }
  }
  const user = event.requestContext?.http?.sourceIp ?? "anonymous";
  const found = await dynamo.send(
    new GetItemCommand({ TableName: TABLE, Key: { pk: { S: `agent#${agent}` }, sk: { S: "agent" } } }),
  );
  const id = `widget:${randomUUID()}`;
  const conversation = { agent, channel: "widget", user };
  const message = { schema: 1, id, conversation, at: Date.now(), kind: { type: "user_message", text } };
  const group = `${agent}/widget/${user}`;
  await sqs.send(
    new SendMessageCommand({
      QueueUrl: EVENTS_QUEUE_URL,
      MessageBody: JSON.stringify(message),
      MessageGroupId: group,
      MessageDeduplicationId: createHash("sha256").update(id).digest("hex"),
    }),
  );
  return json(202, { accepted: true, event_id: id, agent_found: Boolean(found.Item) });
};
