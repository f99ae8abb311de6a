#!/usr/bin/env python3
"""Create the table and queues of template.yaml in moto_server (endpoint in AWS_ENDPOINT_URL) and
print the environment the functions need, as KEY=VALUE lines. Also writes the sample events."""
import json, os, sys
import boto3

out = sys.argv[1]
ep = os.environ["AWS_ENDPOINT_URL"]
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
ddb = boto3.client("dynamodb", **kw)
sqs = boto3.client("sqs", **kw)

S, N = "S", "N"
ddb.create_table(
    TableName="baton-bench",
    BillingMode="PAY_PER_REQUEST",
    AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in
                          [("pk", S), ("sk", S), ("due_shard", S), ("due_at", N), ("obx_shard", S), ("obx_due", N)]],
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    GlobalSecondaryIndexes=[
        {"IndexName": name, "Projection": {"ProjectionType": "KEYS_ONLY"},
         "KeySchema": [{"AttributeName": h, "KeyType": "HASH"}, {"AttributeName": r, "KeyType": "RANGE"}]}
        for name, h, r in [("due", "due_shard", "due_at"), ("outbox_due", "obx_shard", "obx_due")]
    ],
)
events = sqs.create_queue(QueueName="baton-bench-events.fifo",
                          Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "false"})["QueueUrl"]
timers = sqs.create_queue(QueueName="baton-bench-timers")["QueueUrl"]

env = {
    "BATON_TABLE": "baton-bench",
    "BATON_EVENTS_QUEUE_URL": events,
    "BATON_TIMERS_QUEUE_URL": timers,
    "BATON_WIDGET_SECRET": "bench-secret-bench-secret-bench-secret-0123",
}
with open(os.path.join(out, "env"), "w") as f:
    f.write("".join(f"{k}={v}\n" for k, v in env.items()))

# Events: one per function, each reaching DynamoDB or SQS on the invoke path.
with open(os.environ.get("BASE_EVENT", "/work/shared/tools/httpapi_event.json")) as f:
    base = json.load(f)

def http(method, path, route, params, body=None):
    e = json.loads(json.dumps(base))
    e.update(routeKey=f"{method} {route}", rawPath=path, pathParameters=params)
    e["requestContext"].update(routeKey=f"{method} {route}")
    e["requestContext"]["http"].update(method=method, path=path)
    e["headers"]["content-type"] = "application/json"
    if body is not None:
        e["body"] = json.dumps(body)
    return e

conv = {"agent": "demo", "channel": "widget", "user": "u1"}
def sqs_event(body, arn):
    return {"Records": [{"messageId": "m1", "receiptHandle": "r1", "body": json.dumps(body),
                         "attributes": {"MessageGroupId": "demo/widget/u1", "ApproximateReceiveCount": "1"},
                         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                         "eventSourceARN": arn, "awsRegion": "us-east-1"}]}

evs = {
    # load_agent: DynamoDB GetItem (the agent does not exist: 404).
    "widget-api": http("POST", "/api/widget/demo/session", "POST /api/widget/{agent}/session", {"agent": "demo"}, {}),
    "desk-webhook": http("GET", "/api/agents/demo/desk/status", "GET /api/agents/{agent}/desk/status", {"agent": "demo"}),
    "channel-webhook": http("POST", "/channels/telegram/demo", "POST /channels/telegram/{agent}", {"agent": "demo"},
                            {"update_id": 1, "message": {"message_id": 1, "date": 0, "chat": {"id": 42, "type": "private"},
                                                         "text": "hello"}}),
    # The agent lookup: a DynamoDB GetItem (no agent: 404).
    "agent-api": http("POST", "/converse/chat", "POST /converse/chat", {},
                      {"sessionId": "s1", "message": {"type": "text", "text": "hello"}}),
    # $connect of the widget's WebSocket: load_agent, a DynamoDB GetItem (no agent: refused, 404).
    "widget-socket": {"headers": {"Host": "abc123.execute-api.us-east-1.amazonaws.com",
                                  "Origin": "https://shop.example", "Sec-WebSocket-Version": "13"},
                      "multiValueHeaders": {},
                      "queryStringParameters": {"agent": "demo", "token": "u1.c2lnbmF0dXJl"},
                      "multiValueQueryStringParameters": {"agent": ["demo"], "token": ["u1.c2lnbmF0dXJl"]},
                      "requestContext": {"routeKey": "$connect", "eventType": "CONNECT", "stage": "live",
                                         "connectedAt": 1796564712000, "requestTimeEpoch": 1796564712000,
                                         "identity": {"sourceIp": "203.0.113.9"}, "requestId": "r1",
                                         "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
                                         "connectionId": "L0SM9cOFvHcCIhw=", "apiId": "abc123",
                                         "messageDirection": "IN", "extendedRequestId": "r1",
                                         "requestTime": "06/Dec/2026:13:45:12 +0000"},
                      "isBase64Encoded": False},
    # apply_event: reads/writes the conversation in DynamoDB.
    "conversation-worker": sqs_event({"schema": 1, "id": "bench:wake", "conversation": conv, "at": 0, "kind": {"type": "wake"}},
                                     "arn:aws:sqs:us-east-1:123456789012:baton-bench-events.fifo"),
    # a due timer: SendMessage of TimerFired to the events queue.
    "timeout-check": sqs_event({"schema": 1, "conversation": conv, "generation": 1, "due": 0},
                               "arn:aws:sqs:us-east-1:123456789012:baton-bench-timers"),
    # sweep: two DynamoDB Queries on the GSIs.
    "timeout-sweeper": {"version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
                        "account": "123456789012", "time": "2026-11-23T00:00:00Z", "region": "us-east-1",
                        "resources": [], "detail": {}},
    # Node: the widget ingress job (GetItem + SendMessage).
    "node": http("POST", "/api/widget/demo/messages", "POST /api/widget/{agent}/messages", {"agent": "demo"}, {"text": "hello"}),
    "hello-lambda": base,
}
evs["agent-api"]["headers"].update(botid="demo", authorization="Bearer bench-token")
for name, e in evs.items():
    with open(os.path.join(out, f"event-{name}.json"), "w") as f:
        json.dump(e, f)
