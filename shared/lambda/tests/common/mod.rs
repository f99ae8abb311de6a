//! Drives the real Lambda handlers in-process against moto, the way AWS invokes them:
//! HTTP through API Gateway v2 (HTTP API) events and lambda_http's own adapter, the worker
//! and timeout-check through SQS events built from messages received with the SDK, with
//! the records not reported failed deleted afterwards (what the Lambda SQS event source
//! does with `ReportBatchItemFailures`).

#![allow(dead_code)]

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use base64::Engine;
use baton_aws::aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use baton_aws::aws_sdk_sqs::Client as SqsClient;
use baton_core::agent::{Agent, BrainConfig, DeskConfig, FaqEntry, Policy, WidgetConfig};
use baton_core::model::Secret;
use baton_core::ports::{Clock, Store};
use baton_core::{Channel, ConversationKey, Millis};
use baton_lambda::{handle_events, handle_timers, http_router, wire, Aws, Config, Routes};
use baton_tests::desk::FakeDesk;
use baton_tests::moto;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const AGENT: &str = "shop";
pub const HOURS: &str = "We are open 9-17 on weekdays.";
pub const SHIPPING: &str = "Shipping takes 2-4 days.";
pub const ABROAD: &str = "We ship to all EU countries.";
const HOST: &str = "abc123.execute-api.us-east-1.amazonaws.com";
/// A Lambda function URL's host (`{url-id}.lambda-url.{region}.on.aws`).
const FUNCTION_URL_HOST: &str = "u3ffnixqlzekqmcrwbhjpyx3gu0tnbcf.lambda-url.us-east-1.on.aws";
const SOURCE_IP: &str = "198.51.100.7";

pub fn shop_agent(desk_url: &str) -> Agent {
    let faq = |q: &str, a: &str| FaqEntry { question: q.into(), answer: a.into(), keywords: vec![] };
    Agent {
        actions: Default::default(),
        api: None,
        id: AGENT.into(),
        name: "Shop".into(),
        language: "en".into(),
        brain: BrainConfig::Faq {
            faq: vec![
                faq("What are your opening hours?", HOURS),
                faq("How long does shipping take?", SHIPPING),
                faq("Do you ship abroad to other countries?", ABROAD),
            ],
            min_score: 1.0,
        },
        desk: DeskConfig::Webhook {
            url: desk_url.to_string(),
            username: None,
            password: None,
            signing_secret: Some(Secret(SECRET.into())),
        },
        policy: Policy::default(),
        widget: WidgetConfig::default(),
        messages: Default::default(),
        hours: None,
        fallback: Default::default(),
        channels: Default::default(),
        salesiq: None,
        intercom: None,
        livechat: None,
    }
}

/// The queues a hub uses.
#[derive(Clone, Debug)]
pub struct Queues {
    pub events: String,
    pub timers: String,
}

/// One deployment: its own table and queues on moto, the wired handlers, a fake desk and
/// the agent's access token.
pub struct Hub {
    pub aws: Aws,
    pub sqs: SqsClient,
    pub dynamo: baton_aws::aws_sdk_dynamodb::Client,
    pub queues: Queues,
    pub desk: FakeDesk,
    pub token: String,
    pub widget_api: axum::Router,
    pub desk_api: axum::Router,
    pub channel_api: axum::Router,
}

pub async fn clients() -> (baton_aws::aws_sdk_dynamodb::Client, SqsClient) {
    moto::endpoint();
    baton_aws::clients_from_env().await
}

/// A new FIFO events queue and standard timers queue, as `create_event_queue` and
/// `create_timer_queue` make them.
pub async fn new_queues(sqs: &SqsClient) -> Queues {
    let events = baton_aws::create_event_queue(sqs, &format!("{}.fifo", moto::unique_name("ev")))
        .await
        .expect("create events queue");
    let timers = baton_aws::create_timer_queue(sqs, &moto::unique_name("tm")).await.expect("create timers queue");
    Queues { events, timers }
}

pub fn config(table: &str, queues: &Queues) -> Config {
    Config {
        table: table.to_string(),
        events_queue_url: queues.events.clone(),
        timers_queue_url: queues.timers.clone(),
        widget_secret: "a-widget-token-secret-of-at-least-32-chars".into(),
        body_limit: 64 * 1024,
        public_url: None,
        config_cache: baton_lambda::DEFAULT_CONFIG_CACHE,
        // The fake providers listen on loopback.
        allow_private_targets: true,
        widget_socket_url: None,
    }
}

pub async fn hub(edit: impl FnOnce(&mut Agent)) -> Hub {
    hub_with(Arc::new(baton_runtime::clock::SystemClock), None, edit).await
}

/// A hub on `queues` (new ones when `None`) with `clock`.
pub async fn hub_with(clock: Arc<dyn Clock>, queues: Option<Queues>, edit: impl FnOnce(&mut Agent)) -> Hub {
    let (dynamo, sqs) = clients().await;
    let table = moto::unique_name("baton");
    baton_aws::create_table(&dynamo, &table).await.expect("create table");
    let queues = match queues {
        Some(q) => q,
        None => new_queues(&sqs).await,
    };
    // The desk's signing secret lives in SSM Parameter Store; the table holds a reference.
    let ssm = baton_aws::ssm_client_from_env().await;
    let parameter = format!("/baton/{table}/desk-signing-secret");
    ssm.put_parameter()
        .name(&parameter)
        .value(SECRET)
        .r#type(baton_aws::aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("put SSM parameter");
    let secrets = Arc::new(baton_aws::SsmSecrets::new(ssm));
    let aws = wire(config(&table, &queues), clock, dynamo.clone(), sqs.clone(), secrets);
    let desk = FakeDesk::start(Some(SECRET)).await;
    let mut agent = shop_agent(&desk.url());
    if let DeskConfig::Webhook { signing_secret, .. } = &mut agent.desk {
        *signing_secret = Some(Secret(format!("ssm:{parameter}")));
    }
    edit(&mut agent);
    aws.store.put_agent(&agent).await.expect("put agent");
    let token = baton_runtime::auth::generate_token();
    aws.store.add_token(AGENT, &baton_runtime::auth::hash_token(&token), Millis(0)).await.expect("add token");
    Hub {
        widget_api: http_router(&aws, Routes::Widget),
        desk_api: http_router(&aws, Routes::Desk),
        channel_api: http_router(&aws, Routes::Channels),
        aws,
        sqs,
        dynamo,
        queues,
        desk,
        token,
    }
}

// ------------------------------------------------------------------------------ HTTP

/// What API Gateway would answer: the function's response as lambda_http serialises it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Value,
    pub body: Value,
}

/// An HTTP API request to one function's router.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Send the body base64-encoded, as API Gateway does for content it does not treat as
    /// text.
    pub base64: bool,
    /// The caller's address as API Gateway saw it (`requestContext.http.sourceIp`).
    pub source_ip: &'a str,
    /// Sent to the function's Lambda function URL instead of through the HTTP API
    /// (template parameter `FunctionUrls`): the same payload format 2.0, with the URL's host
    /// and its catch-all route key.
    pub function_url: bool,
}

impl<'a> ApiRequest<'a> {
    pub fn new(method: &'a str, path: &'a str) -> Self {
        ApiRequest {
            method,
            path,
            headers: Vec::new(),
            body: None,
            base64: false,
            source_ip: SOURCE_IP,
            function_url: false,
        }
    }

    pub fn source_ip(mut self, ip: &'a str) -> Self {
        self.source_ip = ip;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn json(mut self, body: &Value) -> Self {
        self.body = Some(serde_json::to_vec(body).unwrap());
        self.header("content-type", "application/json")
    }

    pub fn base64(mut self) -> Self {
        self.base64 = true;
        self
    }

    pub fn through_function_url(mut self, yes: bool) -> Self {
        self.function_url = yes;
        self
    }

    /// The API Gateway v2 (payload format 2.0) event of this request.
    pub fn event(&self) -> Value {
        static N: AtomicU64 = AtomicU64::new(0);
        let (raw_path, query) = self.path.split_once('?').unwrap_or((self.path, ""));
        let host = if self.function_url { FUNCTION_URL_HOST } else { HOST };
        let mut headers = json!({
            "host": host,
            "user-agent": "baton-lambda-tests",
            "accept": "*/*",
            "x-forwarded-for": self.source_ip,
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
        });
        if let Some(b) = &self.body {
            headers["content-length"] = json!(b.len().to_string());
        }
        for (k, v) in &self.headers {
            headers[k.as_str()] = json!(v);
        }
        // A function URL has one catch-all route; API Gateway names the route it matched.
        let route_key = if self.function_url { "$default".to_string() } else { format!("{} {raw_path}", self.method) };
        let api_id = host.split('.').next().unwrap_or(host);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let mut event = json!({
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": raw_path,
            "rawQueryString": query,
            "headers": headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": api_id,
                "domainName": host,
                "domainPrefix": api_id,
                "http": {
                    "method": self.method,
                    "path": raw_path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": self.source_ip,
                    "userAgent": "baton-lambda-tests",
                },
                "requestId": format!("req-{}", N.fetch_add(1, Ordering::Relaxed)),
                "routeKey": route_key,
                "stage": "$default",
                "time": "23/Nov/2026:00:00:00 +0000",
                "timeEpoch": now,
            },
            "isBase64Encoded": self.base64,
        });
        if !query.is_empty() {
            let params: serde_json::Map<String, Value> =
                query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), json!(v))).collect();
            event["queryStringParameters"] = Value::Object(params);
        }
        if let Some(b) = &self.body {
            event["body"] = if self.base64 {
                json!(base64::engine::general_purpose::STANDARD.encode(b))
            } else {
                json!(String::from_utf8(b.clone()).expect("text body"))
            };
        }
        event
    }

    /// Invoke `router` as `lambda_http::run` does: the event's JSON deserialised into a
    /// `LambdaRequest`, passed through lambda_http's adapter (request conversion, the
    /// router, response conversion), and the response serialised for API Gateway.
    pub async fn send(self, router: &axum::Router) -> Reply {
        use tower::ServiceExt;
        let raw = serde_json::to_vec(&self.event()).unwrap();
        let request: lambda_http::request::LambdaRequest =
            serde_json::from_slice(&raw).expect("an API Gateway v2 event");
        let adapter = lambda_http::Adapter::from(router.clone());
        let event = lambda_http::LambdaEvent::new(request, lambda_http::Context::default());
        let response = adapter.oneshot(event).await.expect("infallible router");
        let out = serde_json::to_value(&response).expect("serialisable response");
        let status = out["statusCode"].as_u64().expect("statusCode") as u16;
        let text = match &out["body"] {
            Value::String(s) if out["isBase64Encoded"] == json!(true) => {
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
            }
            Value::String(s) => s.clone(),
            _ => String::new(),
        };
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, headers: out["headers"].clone(), body }
    }
}

// --------------------------------------------------------------------------- widget

/// The widget's side over the widget-api function (polling, as the widget does on AWS).
pub struct Widget {
    pub token: String,
    pub conversation_id: String,
    pub cursor: i64,
    router: axum::Router,
    n: u64,
}

impl Widget {
    pub async fn start(hub: &Hub, email: Option<&str>) -> Widget {
        let body = match email {
            Some(e) => json!({"email": e}),
            None => json!({}),
        };
        let r = ApiRequest::new("POST", "/api/widget/shop/session").json(&body).send(&hub.widget_api).await;
        assert_eq!(r.status, 200, "session: {r:?}");
        Widget {
            token: r.body["token"].as_str().unwrap().to_string(),
            conversation_id: r.body["conversation_id"].as_str().unwrap().to_string(),
            cursor: 0,
            router: hub.widget_api.clone(),
            n: 0,
        }
    }

    pub fn key(&self) -> ConversationKey {
        ConversationKey::new(AGENT, Channel::Widget, &self.conversation_id).unwrap()
    }

    pub async fn send_with_id(&self, text: &str, client_id: &str) -> Reply {
        ApiRequest::new("POST", "/api/widget/shop/messages")
            .bearer(&self.token)
            .json(&json!({"text": text, "client_id": client_id}))
            .send(&self.router)
            .await
    }

    /// Send a message; returns the event id the API answered with.
    pub async fn send(&mut self, text: &str) -> String {
        self.n += 1;
        let r = self.send_with_id(text, &format!("c{}", self.n)).await;
        assert_eq!(r.status, 202, "send: {r:?}");
        r.body["event_id"].as_str().unwrap().to_string()
    }

    pub async fn end(&self) {
        let r = ApiRequest::new("POST", "/api/widget/shop/end").bearer(&self.token).send(&self.router).await;
        assert_eq!(r.status, 202, "end: {r:?}");
    }

    pub async fn messages_after(&self, cursor: i64) -> Vec<Value> {
        let path = format!("/api/widget/shop/messages?after={cursor}");
        let r = ApiRequest::new("GET", &path).bearer(&self.token).send(&self.router).await;
        assert_eq!(r.status, 200, "poll: {r:?}");
        r.body["messages"].as_array().cloned().unwrap_or_default()
    }

    pub async fn all(&self) -> Vec<Value> {
        self.messages_after(0).await
    }

    /// The next message after the cursor matching `pred` (everything is processed in-line,
    /// so no waiting); moves the cursor past it.
    pub async fn next(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let messages = self.messages_after(self.cursor).await;
        for m in &messages {
            self.cursor = m["seq"].as_i64().unwrap();
            if pred(m) {
                return m.clone();
            }
        }
        panic!("no widget message: {what}; got {messages:#?}");
    }

    /// Texts of every message from `from`.
    pub async fn texts_from(&self, from: &str) -> Vec<String> {
        self.all().await.iter().filter(|m| m["from"] == from).map(|m| m["text"].as_str().unwrap().to_string()).collect()
    }
}

impl Hub {
    /// The desk answers as a human through the desk-webhook function.
    pub async fn desk_reply(&self, conversation_id: &str, text: &str, webhook_id: Option<&str>) -> Reply {
        let body = json!({"conversation_id": conversation_id, "timestamp": 1700000000000i64, "body": text});
        let mut req =
            ApiRequest::new("POST", "/desks/webhook/shop/v1/human/message/receive").bearer(&self.token).json(&body);
        if let Some(id) = webhook_id {
            req = req.header("webhook-id", id);
        }
        req.send(&self.desk_api).await
    }
}

// ------------------------------------------------------------------------------ SQS

pub async fn queue_arn(sqs: &SqsClient, url: &str) -> String {
    queue_attribute(sqs, url, QueueAttributeName::QueueArn).await
}

pub async fn queue_attribute(sqs: &SqsClient, url: &str, name: QueueAttributeName) -> String {
    let out =
        sqs.get_queue_attributes().queue_url(url).attribute_names(name.clone()).send().await.expect("queue attributes");
    out.attributes().and_then(|a| a.get(&name)).cloned().unwrap_or_default()
}

/// Visible, in-flight and delayed messages.
pub async fn queue_depth(sqs: &SqsClient, url: &str) -> usize {
    let visible: usize =
        queue_attribute(sqs, url, QueueAttributeName::ApproximateNumberOfMessages).await.parse().unwrap();
    let in_flight: usize =
        queue_attribute(sqs, url, QueueAttributeName::ApproximateNumberOfMessagesNotVisible).await.parse().unwrap();
    let delayed: usize =
        queue_attribute(sqs, url, QueueAttributeName::ApproximateNumberOfMessagesDelayed).await.parse().unwrap();
    visible + in_flight + delayed
}

/// One receive as the Lambda poller does it: up to 10 messages with all system attributes.
pub async fn receive(sqs: &SqsClient, url: &str) -> Vec<Message> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(0)
        .visibility_timeout(30)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default()
}

pub fn attribute(m: &Message, name: MessageSystemAttributeName) -> Option<String> {
    m.attributes().and_then(|a| a.get(&name)).cloned()
}

/// One record of a Lambda SQS event, from a received message.
pub fn record(m: &Message, queue_arn: &str) -> Value {
    let attributes: serde_json::Map<String, Value> =
        m.attributes().map(|a| a.iter().map(|(k, v)| (k.as_str().to_string(), json!(v))).collect()).unwrap_or_default();
    json!({
        "messageId": m.message_id().expect("message id"),
        "receiptHandle": m.receipt_handle().expect("receipt handle"),
        "body": m.body().unwrap_or_default(),
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": m.md5_of_body().unwrap_or_default(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    })
}

/// The event Lambda passes for these records.
pub fn sqs_event(records: Vec<Value>) -> SqsEvent {
    let raw = serde_json::to_vec(&json!({ "Records": records })).unwrap();
    serde_json::from_slice(&raw).expect("an SQS event")
}

/// The ids the function reported failed, read from its response as Lambda reads it.
pub fn failed_ids(response: &SqsBatchResponse) -> Vec<String> {
    let out = serde_json::to_value(response).unwrap();
    out["batchItemFailures"]
        .as_array()
        .expect("batchItemFailures")
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect()
}

/// Invoke conversation-worker with `records`; returns the failed message ids.
pub async fn invoke_worker(aws: &Aws, records: Vec<Value>) -> Vec<String> {
    failed_ids(&handle_events(aws, sqs_event(records)).await)
}

pub async fn delete(sqs: &SqsClient, url: &str, m: &Message) {
    sqs.delete_message().queue_url(url).receipt_handle(m.receipt_handle().unwrap()).send().await.expect("delete");
}

/// A failed message's visibility timeout runs out: it can be received again.
pub async fn release(sqs: &SqsClient, url: &str, m: &Message) {
    sqs.change_message_visibility()
        .queue_url(url)
        .receipt_handle(m.receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .expect("change visibility");
}

/// What the event source does after an invocation: delete the messages not reported
/// failed; the failed ones come back (at once here: their visibility timeout is cut).
pub async fn settle(sqs: &SqsClient, url: &str, messages: &[Message], failed: &[String]) {
    for m in messages {
        if failed.iter().any(|f| Some(f.as_str()) == m.message_id()) {
            release(sqs, url, m).await;
        } else {
            delete(sqs, url, m).await;
        }
    }
}

/// Run conversation-worker until the events queue is empty; panics on a failed record.
/// Returns how many records were processed.
pub async fn run_worker(hub: &Hub) -> usize {
    run_worker_on(&hub.aws, &hub.sqs, &hub.queues.events).await
}

pub async fn run_worker_on(aws: &Aws, sqs: &SqsClient, url: &str) -> usize {
    let arn = queue_arn(sqs, url).await;
    let mut done = 0;
    for _ in 0..100 {
        let messages = receive(sqs, url).await;
        if messages.is_empty() {
            return done;
        }
        let failed = invoke_worker(aws, messages.iter().map(|m| record(m, &arn)).collect()).await;
        assert!(failed.is_empty(), "records failed: {failed:?} of {messages:#?}");
        settle(sqs, url, &messages, &failed).await;
        done += messages.len();
    }
    panic!("the events queue never drained");
}

/// Run timeout-check on whatever the timers queue has now; panics on a failed record.
pub async fn run_timers(hub: &Hub) -> usize {
    let url = &hub.queues.timers;
    let arn = queue_arn(&hub.sqs, url).await;
    let messages = receive(&hub.sqs, url).await;
    let records = messages.iter().map(|m| record(m, &arn)).collect();
    let failed = failed_ids(&handle_timers(&hub.aws, sqs_event(records)).await);
    assert!(failed.is_empty(), "timer records failed: {failed:?}");
    settle(&hub.sqs, url, &messages, &failed).await;
    messages.len()
}

pub fn wall_now() -> Millis {
    baton_runtime::clock::SystemClock.now()
}

// ------------------------------------------------------------------------ WebSocket

/// A `$connect` event as API Gateway sends it to the integration.
pub fn connect_event(
    connection: &str,
    agent: &str,
    token: Option<&str>,
    origin: &str,
) -> aws_lambda_events::event::apigw::ApiGatewayWebsocketProxyRequest {
    let mut query = json!({"agent": agent});
    if let Some(t) = token {
        query["token"] = json!(t);
    }
    let multi: serde_json::Map<String, Value> =
        query.as_object().unwrap().iter().map(|(k, v)| (k.clone(), json!([v]))).collect();
    let event = json!({
        "headers": {
            "Host": "abc123.execute-api.us-east-1.amazonaws.com",
            "Origin": origin,
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Port": "443",
            "X-Forwarded-Proto": "https"
        },
        "multiValueHeaders": {"Origin": [origin]},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi,
        "requestContext": {
            "routeKey": "$connect",
            "eventType": "CONNECT",
            "extendedRequestId": "Jk3vHhcHoAMFpXg=",
            "requestTime": "06/Dec/2026:13:45:12 +0000",
            "messageDirection": "IN",
            "stage": "live",
            "connectedAt": 1796564712000i64,
            "requestTimeEpoch": 1796564712000i64,
            "identity": {"sourceIp": "203.0.113.9", "userAgent": "Mozilla/5.0"},
            "requestId": "Jk3vHhcHoAMFpXg=",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": connection,
            "apiId": "abc123"
        },
        "isBase64Encoded": false
    });
    serde_json::from_value(event).expect("a $connect event")
}
