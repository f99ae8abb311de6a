//! What a typical conversation costs on AWS, counted from a run of the real Lambda handlers
//! on moto: every DynamoDB, SQS and SSM call the functions make goes through a metering
//! proxy ([`baton_tests::aws_meter`]) that prices it as AWS bills it; every handler call is
//! one Lambda invocation (timed) and, for HTTP functions, one API Gateway request; the log
//! lines the functions write are counted in bytes. The event source mapping's own SQS calls
//! (one receive and one batch delete per batch) are counted per batch the run delivers.
//!
//! The conversation (BENCHMARKS.md, "Cost model"): 10 user messages answered by the FAQ
//! bot, a handoff, 10 human replies each answered by the user, the human ends; 32 inbound
//! events. Once on Telegram (no polling: replies are pushed), once on the web widget, which
//! polls on AWS (API Gateway cannot stream) on the schedule of `widget-page.js` over a stated
//! timeline, once on the widget with its WebSocket API, and once more on Telegram in 10 chats
//! at once, whose events reach the worker in batches. Timers run too: the wait and session
//! timers are delayed SQS messages that arrive after the conversation and are dropped as stale.
//!
//! The test fails when the Telegram conversation's billed units grow past ceilings set from
//! the measured bill, so a change that adds calls shows here. Print the bill with
//! `cargo test -p baton-lambda --test cost -- --nocapture` (BENCHMARKS.md's figures; with
//! `--profile perf` the durations come out about the same: against moto they are the calls').

mod common;

use baton_aws::aws_sdk_sqs::types::Message;
use baton_core::agent::TelegramConfig;
use baton_core::model::Secret;
use baton_core::ports::MessageLog;
use baton_lambda::{handle_events, handle_timers, http_router, sweep, wire, Aws, Routes, SocketHandler};
use baton_tests::apigw_socket::FakeSocketApi;
use baton_tests::aws_meter::{summarize, writes_by_kind, AwsMeter, MeteredCall, SparseIndex};
use baton_tests::telegram::{text_update, FakeTelegram};
use common::{failed_ids, queue_arn, queue_depth, receive, record, settle, sqs_event, ApiRequest, Hub};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BOT_TOKEN: &str = "7654321:AAE_cost-bot";
const HOOK_SECRET: &str = "cost-hook-secret";
/// Lambda memory of every function (template.yaml, Globals).
const MEMORY_GB: f64 = 128.0 / 1024.0;
/// What the Lambda service itself logs per invocation at its default level (INFO): the
/// `platform.start` and `platform.report` records of the JSON format, about 360 bytes with
/// request ids and figures. At WARN it logs neither (template.yaml, `PlatformLogLevel`).
const PLATFORM_LOG_BYTES_AT_INFO: usize = 360;
/// CloudWatch Logs counts 26 bytes of overhead per log event (PutLogEvents).
const LOG_EVENT_OVERHEAD: usize = 26;
/// The target: all-in per 1,000 conversations, without LLM tokens (BENCHMARKS.md: met at the
/// webhooks' function URLs, the stack's default; not through the HTTP API for a conversation
/// alone).
const TARGET_PER_1000: f64 = 0.15;

/// Public on-demand prices, us-east-1, as of 2026-12 (BENCHMARKS.md names the sources).
mod price {
    /// API Gateway HTTP API, per request (first 300 million a month).
    pub const API_REQUEST: f64 = 1.00e-6;
    /// Lambda, per request.
    pub const LAMBDA_REQUEST: f64 = 0.20e-6;
    /// Lambda on arm64, per GB-second (first tier).
    pub const LAMBDA_GB_SECOND: f64 = 0.0000133334;
    /// SQS FIFO queue, per request (the events queue).
    pub const SQS_FIFO_REQUEST: f64 = 0.50e-6;
    /// SQS standard queue, per request (the timers queue).
    pub const SQS_STANDARD_REQUEST: f64 = 0.40e-6;
    /// DynamoDB on-demand, per write request unit.
    pub const DYNAMO_WRITE_UNIT: f64 = 0.625e-6;
    /// DynamoDB on-demand, per read request unit.
    pub const DYNAMO_READ_UNIT: f64 = 0.125e-6;
    /// CloudWatch Logs ingestion (standard class), per byte.
    pub const LOG_BYTE: f64 = 0.50 / 1e9;
    /// API Gateway WebSocket API, per message (each 32 KB; first billion a month).
    pub const WS_MESSAGE: f64 = 1.00e-6;
    /// API Gateway WebSocket API, per connection minute.
    pub const WS_CONNECTION_MINUTE: f64 = 0.25e-6;
}

/// Everything billed, as measured.
#[derive(Default)]
struct Ledger {
    /// Per function: the duration of each invocation.
    invocations: BTreeMap<&'static str, Vec<Duration>>,
    api_requests: usize,
    /// Event source mapping calls: receives that return records and batch deletes, per
    /// queue kind.
    esm_fifo_requests: usize,
    esm_standard_requests: usize,
    /// Receives of the events queue that found it empty (one ends each drain here). The
    /// event source's pollers long-poll all the time, so in a deployment these are paid by
    /// the hour, not per message (see `print_bill`).
    esm_empty_receives: usize,
    /// API Gateway's access log: one line per request, in the template's format.
    access_log_bytes: usize,
    /// WebSocket API: messages (each `$connect` counted as one, and every push) and the
    /// minutes connections stay open.
    socket_messages: usize,
    socket_minutes: f64,
    /// Records handed to conversation-worker in all its invocations.
    worker_records: usize,
    /// Per function: the AWS actions its invocations called (checked against its role).
    actions: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Ledger {
    fn invoked(&mut self, function: &'static str, took: Duration) {
        self.invocations.entry(function).or_default().push(took);
    }

    fn invocation_count(&self) -> usize {
        self.invocations.values().map(Vec::len).sum()
    }

    /// GB-seconds billed: each invocation rounded up to the millisecond.
    fn gb_seconds(&self) -> f64 {
        let ms: u128 = self.invocations.values().flatten().map(|d| d.as_micros().div_ceil(1000)).sum();
        ms as f64 / 1000.0 * MEMORY_GB
    }
}

/// Counts the bytes the functions log (the JSON format the functions use on Lambda).
#[derive(Clone, Default)]
struct LogMeter {
    bytes: Arc<AtomicUsize>,
    lines: Arc<AtomicUsize>,
}

impl std::io::Write for LogMeter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.fetch_add(buf.len(), Ordering::Relaxed);
        self.lines.fetch_add(buf.iter().filter(|b| **b == b'\n').count(), Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The functions the event source mappings invoke.
#[derive(Clone, Copy)]
enum Consumer {
    Worker,
    TimeoutCheck,
}

/// One deployment whose functions talk to AWS through the meter.
struct Metered {
    hub: Hub,
    meter: AwsMeter,
    ledger: Ledger,
    logs: LogMeter,
    telegram: FakeTelegram,
    /// The agent's longer timeout, and when the worker last ran: every timer armed is due
    /// by the sum.
    longest_timer: Duration,
    last_worker_run: Instant,
    /// The HTTP functions are called at their Lambda function URLs (template parameter
    /// `FunctionUrls`) instead of through the HTTP API: no API Gateway request or access log
    /// line is billed (a function URL costs only the invocation).
    function_urls: bool,
}

impl Metered {
    /// `socket`: the management endpoint the worker pushes the widget's messages to.
    async fn start(logs: LogMeter, socket: Option<String>) -> Metered {
        // Short timers so the run sees them fire; any timeout up to 900 s is the same one
        // delayed message.
        Metered::start_with(logs, socket, (2, 4)).await
    }

    /// With the agent's wait and session timeouts in seconds.
    async fn start_with(logs: LogMeter, socket: Option<String>, (wait, session): (u64, u64)) -> Metered {
        let telegram = FakeTelegram::start(BOT_TOKEN).await;
        let api = telegram.url();
        let hub = common::hub(|a| {
            a.channels.telegram = Some(TelegramConfig {
                bot_token: Secret(BOT_TOKEN.into()),
                secret_token: Secret(HOOK_SECRET.into()),
                api_base: api,
                poll: false,
            });
            a.policy.wait_timeout_secs = wait;
            a.policy.session_timeout_secs = session;
        })
        .await;
        let meter = AwsMeter::start(
            &baton_tests::moto::endpoint(),
            vec![
                SparseIndex { name: "due".into(), keys: ["due_shard".into(), "due_at".into()] },
                SparseIndex { name: "outbox_due".into(), keys: ["obx_shard".into(), "obx_due".into()] },
            ],
        )
        .await;
        let sdk = baton_aws::sdk_config().await;
        let dynamo = baton_aws::aws_sdk_dynamodb::Client::from_conf(
            baton_aws::aws_sdk_dynamodb::config::Builder::from(&sdk).endpoint_url(meter.url()).build(),
        );
        let sqs = baton_aws::aws_sdk_sqs::Client::from_conf(
            baton_aws::aws_sdk_sqs::config::Builder::from(&sdk).endpoint_url(meter.url()).build(),
        );
        let ssm = baton_aws::aws_sdk_ssm::Client::from_conf(
            baton_aws::aws_sdk_ssm::config::Builder::from(&sdk).endpoint_url(meter.url()).build(),
        );
        let mut config = common::config(&hub.aws.config.table, &hub.queues);
        config.widget_socket_url = socket;
        let aws: Aws = wire(
            config,
            Arc::new(baton_runtime::clock::SystemClock),
            dynamo,
            sqs,
            Arc::new(baton_aws::SsmSecrets::new(ssm)),
        );
        let hub = Hub {
            widget_api: http_router(&aws, Routes::Widget),
            desk_api: http_router(&aws, Routes::Desk),
            channel_api: http_router(&aws, Routes::Channels),
            aws,
            ..hub
        };
        meter.reset();
        logs.bytes.store(0, Ordering::Relaxed);
        logs.lines.store(0, Ordering::Relaxed);
        let longest_timer = Duration::from_secs(wait.max(session));
        let last_worker_run = Instant::now();
        Metered {
            hub,
            meter,
            ledger: Ledger::default(),
            logs,
            telegram,
            longest_timer,
            last_worker_run,
            function_urls: false,
        }
    }

    async fn api(&mut self, function: &'static str, req: ApiRequest<'_>) -> common::Reply {
        let router = match function {
            "widget-api" => &self.hub.widget_api,
            "desk-webhook" => &self.hub.desk_api,
            _ => &self.hub.channel_api,
        };
        let method = req.method;
        let route = format!("{method} {}", req.path.split('?').next().unwrap_or_default());
        let (started, calls) = (Instant::now(), self.meter.call_count());
        let reply = req.through_function_url(self.function_urls).send(router).await;
        self.invoked(function, started, calls);
        if self.function_urls {
            return reply;
        }
        self.ledger.api_requests += 1;
        let response_bytes = if reply.body.is_null() { 0 } else { reply.body.to_string().len() };
        self.ledger.access_log_bytes +=
            access_log_line(method, &route, reply.status, response_bytes).len() + 1 + LOG_EVENT_OVERHEAD;
        reply
    }

    /// The widget opens its WebSocket: API Gateway invokes widget-socket with `$connect`.
    async fn connect(&mut self, connection: &str, token: &str) {
        let event = common::connect_event(connection, "shop", Some(token), "https://shop.example");
        let (started, calls) = (Instant::now(), self.meter.call_count());
        let reply = SocketHandler::new(&self.hub.aws).handle(event).await;
        self.invoked("widget-socket", started, calls);
        self.ledger.socket_messages += 1;
        assert_eq!(reply.status_code, 200, "{reply:?}");
    }

    async fn telegram_says(&mut self, chat: i64, update_id: i64, text: &str) {
        let r = self
            .api(
                "channel-webhook",
                ApiRequest::new("POST", "/channels/telegram/shop")
                    .header("X-Telegram-Bot-Api-Secret-Token", HOOK_SECRET)
                    .json(&text_update(update_id, chat, text)),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }

    async fn human_says(&mut self, conversation_id: &str, n: usize, text: &str) {
        let body = json!({"conversation_id": conversation_id, "timestamp": 1700000000000i64 + n as i64, "body": text});
        let req = ApiRequest::new("POST", "/desks/webhook/shop/v1/human/message/receive")
            .bearer(&self.hub.token)
            .header("webhook-id", &format!("msg_cost_{conversation_id}_{n}"))
            .json(&body);
        let r = self.api("desk-webhook", req).await;
        assert_eq!(r.status, 200, "{r:?}");
    }

    async fn human_ends(&mut self, conversation_id: &str) {
        let body = json!({"conversation_id": conversation_id, "timestamp": 1700000009999i64});
        let req = ApiRequest::new("POST", "/desks/webhook/shop/v1/human/close").bearer(&self.hub.token).json(&body);
        let r = self.api("desk-webhook", req).await;
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// The event source mapping: batches of up to 10 to conversation-worker until the
    /// queue is empty.
    async fn worker(&mut self) {
        let url = self.hub.queues.events.clone();
        let arn = queue_arn(&self.hub.sqs, &url).await;
        loop {
            let messages = receive(&self.hub.sqs, &url).await;
            if messages.is_empty() {
                self.ledger.esm_empty_receives += 1;
                return;
            }
            self.ledger.esm_fifo_requests += 1;
            self.invoke(Consumer::Worker, &url, &arn, &messages).await;
            self.last_worker_run = Instant::now();
            self.ledger.esm_fifo_requests += 1;
        }
    }

    /// One invocation of `consumer` with `messages`, then what the event source does after
    /// it (delete the messages, none may fail here).
    async fn invoke(&mut self, consumer: Consumer, url: &str, arn: &str, messages: &[Message]) {
        let event = sqs_event(messages.iter().map(|m| record(m, arn)).collect());
        let (started, calls) = (Instant::now(), self.meter.call_count());
        let response = match consumer {
            Consumer::Worker => handle_events(&self.hub.aws, event).await,
            Consumer::TimeoutCheck => handle_timers(&self.hub.aws, event).await,
        };
        if matches!(consumer, Consumer::Worker) {
            self.ledger.worker_records += messages.len();
        }
        let function = match consumer {
            Consumer::Worker => "conversation-worker",
            Consumer::TimeoutCheck => "timeout-check",
        };
        self.invoked(function, started, calls);
        let failed = failed_ids(&response);
        assert!(failed.is_empty(), "{function}: records failed: {failed:?}");
        settle(&self.hub.sqs, url, messages, &failed).await;
    }

    /// One invocation of `function` that started at `started`, after the meter's first
    /// `calls` calls: its time and the actions it called.
    fn invoked(&mut self, function: &'static str, started: Instant, calls: usize) {
        self.ledger.invoked(function, started.elapsed());
        self.ledger.actions.entry(function).or_default().extend(self.meter.actions_since(calls));
    }

    /// Wait for every delayed timer message, run timeout-check on them and the worker on
    /// what they queue, then the sweeper once.
    async fn timers(&mut self) {
        let url = self.hub.queues.timers.clone();
        let arn = queue_arn(&self.hub.sqs, &url).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while queue_depth(&self.hub.sqs, &url).await > 0 {
            assert!(Instant::now() < deadline, "timer messages never came due");
            let messages = receive(&self.hub.sqs, &url).await;
            if messages.is_empty() {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            self.ledger.esm_standard_requests += 1;
            self.invoke(Consumer::TimeoutCheck, &url, &arn, &messages).await;
            self.ledger.esm_standard_requests += 1;
            self.worker().await;
        }
        // The sweeper's next run (every minute) finds what the conversations left in the
        // `due` index and takes it out: billed here, with the run's own queries of both
        // indexes, which a deployment pays once a minute whatever runs (so a single
        // conversation's bill carries them whole). It runs once every timer armed is due.
        let ready = self.last_worker_run + self.longest_timer + Duration::from_millis(100);
        tokio::time::sleep_until(ready.into()).await;
        let (started, calls) = (Instant::now(), self.meter.call_count());
        let swept = sweep(&self.hub.aws).await.expect("sweep");
        self.invoked("timeout-sweeper", started, calls);
        assert_eq!((swept.timers, swept.wakes), (0, 0), "every timer fired through its message");
    }

    fn bill(&self, title: &str, polls: usize) -> Bill {
        self.bill_of(title, polls, 1)
    }

    /// The bill of `conversations` that ran at once, per conversation.
    fn bill_of(&self, title: &str, polls: usize, conversations: usize) -> Bill {
        self.check_roles();
        let calls = self.meter.calls();
        let lines = self.logs.lines.load(Ordering::Relaxed);
        let platform = match template_default("PlatformLogLevel").as_str() {
            "WARN" => 0,
            _ => PLATFORM_LOG_BYTES_AT_INFO + 2 * LOG_EVENT_OVERHEAD,
        };
        let log_bytes = self.logs.bytes.load(Ordering::Relaxed)
            + lines * LOG_EVENT_OVERHEAD
            + self.ledger.invocation_count() * platform
            + self.ledger.access_log_bytes;
        print_bill(title, &calls, &self.ledger, log_bytes, polls, conversations)
    }
}

/// The deployed template: the cost follows its logging settings.
const TEMPLATE: &str = include_str!("../../../template.yaml");

/// The actions the role of `function` grants in template.yaml: the `Action` entries of its
/// inline policy (named after the function). Resources and conditions are not compared.
fn granted(function: &str) -> BTreeSet<String> {
    let header = format!("        - PolicyName: {function}");
    assert!(TEMPLATE.lines().any(|l| l == header), "template.yaml has no policy {function}");
    let is_action = |s: &str| {
        s.split_once(':').is_some_and(|(service, action)| {
            !service.is_empty()
                && service.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                && !action.is_empty()
                && action.chars().all(|c| c.is_ascii_alphanumeric() || c == '*')
        })
    };
    TEMPLATE
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("Action: ").or_else(|| l.strip_prefix("- ")).map(str::trim)
        })
        .filter(|a| is_action(a))
        .map(str::to_string)
        .collect()
}

impl Metered {
    /// Every AWS action each function called in this run is one its role grants (a call
    /// the template forgot fails only once deployed, with AccessDenied).
    fn check_roles(&self) {
        for (function, actions) in &self.ledger.actions {
            let granted = granted(function);
            let needed: BTreeSet<&str> = actions.iter().flat_map(|a| permissions_for(a)).collect();
            let missing: Vec<&str> = needed.into_iter().filter(|a| !granted.contains(*a)).collect();
            assert!(missing.is_empty(), "{function} calls {missing:?}, which its role in template.yaml does not grant");
        }
    }
}

/// The IAM permissions an API action needs: batch sends and deletes are authorized as the
/// single ones, and a transaction by each write in it (the commit's: an update and puts).
fn permissions_for(action: &str) -> Vec<&str> {
    match action {
        "sqs:SendMessageBatch" => vec!["sqs:SendMessage"],
        "sqs:DeleteMessageBatch" => vec!["sqs:DeleteMessage"],
        "sqs:ChangeMessageVisibilityBatch" => vec!["sqs:ChangeMessageVisibility"],
        "dynamodb:TransactWriteItems" => vec!["dynamodb:UpdateItem", "dynamodb:PutItem"],
        "dynamodb:TransactGetItems" => vec!["dynamodb:GetItem"],
        other => vec![other],
    }
}

/// The default of one of the template's parameters, unquoted.
fn template_default(parameter: &str) -> String {
    let header = format!("  {parameter}:");
    let mut lines = TEMPLATE.lines().skip_while(|l| *l != header).skip(1);
    lines
        .by_ref()
        .take_while(|l| l.starts_with("    "))
        .find_map(|l| l.trim().strip_prefix("Default:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("template.yaml has no default for {parameter}"))
}

/// The access log line API Gateway writes for one request: the template's format (a folded
/// YAML scalar: its lines joined by spaces) with typical values for what a run cannot know.
fn access_log_line(method: &str, route: &str, status: u16, response_bytes: usize) -> String {
    let mut lines = TEMPLATE.lines().skip_while(|l| l.trim() != "Format: >-").skip(1);
    let format: Vec<&str> = lines.by_ref().take_while(|l| l.starts_with("          ")).map(str::trim).collect();
    assert!(!format.is_empty(), "template.yaml has no access log format");
    let format = format.join(" ");
    let mut line = String::new();
    let mut rest = format.as_str();
    while let Some(at) = rest.find("$context.") {
        line.push_str(&rest[..at]);
        let name_len =
            rest[at + 9..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '.')).unwrap_or(rest.len() - at - 9);
        let name = &rest[at + 9..at + 9 + name_len];
        line.push_str(&match name {
            "requestId" => "Jk3vHhcHoAMEb6Q=".to_string(),
            "identity.sourceIp" => "203.0.113.195".to_string(),
            "requestTime" => "06/Dec/2026:13:45:12 +0000".to_string(),
            "httpMethod" => method.to_string(),
            "routeKey" => route.to_string(),
            "status" => status.to_string(),
            "responseLength" => response_bytes.to_string(),
            "responseLatency" => "14".to_string(),
            // API Gateway writes "-" for a value that is not there.
            "integrationErrorMessage" => "-".to_string(),
            other => panic!("no typical value for $context.{other} in the access log format"),
        });
        rest = &rest[at + 9 + name_len..];
    }
    line.push_str(rest);
    line
}

/// One conversation's bill.
struct Bill {
    dollars: f64,
    read_units: f64,
    write_units: f64,
    sqs_requests: usize,
    api_requests: usize,
}

/// Print the bill of `conversations` (the calls in all, the bill per conversation).
fn print_bill(
    title: &str,
    calls: &[MeteredCall],
    ledger: &Ledger,
    log_bytes: usize,
    polls: usize,
    conversations: usize,
) -> Bill {
    let per = conversations as f64;
    let sums = summarize(calls);
    let mut read_units = 0.0;
    let mut write_units = 0.0;
    let mut sqs_requests = 0.0;
    println!("\n### {title}\n");
    println!("| Service | Call | Calls | Entries | Read units | Write units (table + index) | SQS requests |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for ((service, action), (n, entries, b)) in &sums {
        read_units += b.read_units;
        write_units += b.write_units + b.index_write_units;
        sqs_requests += b.sqs_requests;
        println!(
            "| {service} | {action} | {n} | {entries} | {} | {} + {} | {} |",
            b.read_units, b.write_units, b.index_write_units, b.sqs_requests
        );
    }
    // The events queue is FIFO; the functions' own SQS calls to the timers queue are the
    // SendMessage calls with a delay, which the meter cannot tell apart by queue: price
    // them all at the FIFO rate (the higher one).
    let esm = ledger.esm_fifo_requests as f64 * price::SQS_FIFO_REQUEST
        + ledger.esm_standard_requests as f64 * price::SQS_STANDARD_REQUEST;
    println!(
        "| sqs | event source mapping (receive + batch delete) | {} | | | | {} |",
        ledger.esm_fifo_requests + ledger.esm_standard_requests,
        ledger.esm_fifo_requests + ledger.esm_standard_requests
    );
    println!();
    println!("| Item written | Writes | Table write units |");
    println!("|---|---:|---:|");
    for (kind, (n, units)) in writes_by_kind(calls) {
        println!("| {kind} | {n} | {units} |");
    }
    println!();
    println!("| Function | Invocations | Median duration | Billed ms |");
    println!("|---|---:|---:|---:|");
    for (f, ds) in &ledger.invocations {
        let mut sorted = ds.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        let billed: u128 = ds.iter().map(|d| d.as_micros().div_ceil(1000)).sum();
        println!("| {f} | {} | {:.1} ms | {billed} |", ds.len(), median.as_secs_f64() * 1000.0);
    }
    let items = [
        ("API Gateway requests", ledger.api_requests as f64 / per, price::API_REQUEST),
        ("Lambda requests", ledger.invocation_count() as f64 / per, price::LAMBDA_REQUEST),
        ("Lambda GB-seconds (arm64, 128 MB)", ledger.gb_seconds() / per, price::LAMBDA_GB_SECOND),
        ("SQS requests by the functions", sqs_requests / per, price::SQS_FIFO_REQUEST),
        ("DynamoDB read units", read_units / per, price::DYNAMO_READ_UNIT),
        ("DynamoDB write units", write_units / per, price::DYNAMO_WRITE_UNIT),
        ("CloudWatch Logs bytes", log_bytes as f64 / per, price::LOG_BYTE),
        ("WebSocket messages", ledger.socket_messages as f64 / per, price::WS_MESSAGE),
        ("WebSocket connection minutes", ledger.socket_minutes / per, price::WS_CONNECTION_MINUTE),
    ];
    let esm = esm / per;
    let mut total = esm;
    println!();
    println!("| Item | Per conversation | Per 1,000 conversations |");
    println!("|---|---:|---:|");
    for (name, qty, unit) in items {
        total += qty * unit;
        println!("| {name} | {qty:.3} | ${:.4} |", qty * unit * 1000.0);
    }
    println!("| SQS requests by the event source mapping | | ${:.4} |", esm * 1000.0);
    println!("| **Total** | | **${:.4}** |", total * 1000.0);
    // The event source's pollers long-poll each queue all the time (a receive waits up to
    // 20 s for a message), so the receive after a batch returns the next message as it comes;
    // a receive comes back empty only when no message comes for 20 s, whatever the traffic:
    // an hourly cost of the deployment (BENCHMARKS.md prices it), not one of a conversation.
    let empty = ledger.esm_empty_receives as f64 / per;
    println!(
        "\n(receives that found the events queue empty, one after each drain here: {empty:.1} per conversation, \
         not in the total; billed as one per batch, as earlier versions of this test did: ${:.4})",
        (total + empty * price::SQS_FIFO_REQUEST) * 1000.0
    );
    println!(
        "\n(CloudWatch Logs: {log_bytes} bytes, of which API Gateway's access log {}; Lambda's own lines at \
         PlatformLogLevel {})",
        ledger.access_log_bytes,
        template_default("PlatformLogLevel")
    );
    if polls > 0 {
        println!("(widget polls in this run: {polls})");
    }
    Bill {
        dollars: total,
        read_units: read_units / per,
        write_units: write_units / per,
        sqs_requests: (sqs_requests as usize + ledger.esm_fifo_requests + ledger.esm_standard_requests) / conversations,
        api_requests: ledger.api_requests / conversations,
    }
}

/// How many polls `widget-page.js` makes in a quiet gap of `secs` seconds after a message:
/// every second while "hot" (a human is or is about to be on), else starting at 1 s and
/// growing by half each time up to 10 s.
fn polls_in_gap(secs: f64, hot: bool) -> usize {
    if hot {
        return secs as usize;
    }
    let (mut t, mut delay, mut n) = (0.0, 1.0, 0);
    loop {
        t += delay;
        if t > secs {
            return n;
        }
        n += 1;
        delay = f64::min(10.0, (delay * 1.5_f64 * 1000.0).round() / 1000.0);
    }
}

/// The stated timeline of a typical conversation, in seconds: the user reads a bot answer
/// and writes again after 20 s; a human takes the conversation after 60 s; human and user
/// each answer after 30 s.
const USER_THINKS: f64 = 20.0;
const HUMAN_PICKS_UP: f64 = 60.0;
const TURN: f64 = 30.0;
/// The whole timeline: 10 bot answers read, the human picking up, 10 turns each way.
const TIMELINE_SECS: f64 = 10.0 * USER_THINKS + HUMAN_PICKS_UP + 20.0 * TURN;

/// Inbound events of the typical conversation: 10 questions, the handoff request, 10 human
/// replies, 10 user replies, the human's close.
const INBOUND_EVENTS: usize = 32;

const QUESTIONS: [&str; 3] =
    ["What are your opening hours?", "How long does shipping take?", "Do you ship abroad to other countries?"];

static LOGS: std::sync::OnceLock<LogMeter> = std::sync::OnceLock::new();

fn log_meter() -> LogMeter {
    LOGS.get_or_init(|| {
        let meter = LogMeter::default();
        let writer = meter.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .json()
            .without_time()
            .with_writer(move || writer.clone())
            .try_init();
        meter
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bill_of_a_typical_conversation_does_not_grow() {
    // One test at a time through the log meter: the two runs are in one test.
    let logs = log_meter();

    // ---- Telegram: replies are pushed, nothing polls.
    let mut m = Metered::start(logs.clone(), None).await;
    telegram_chats(&mut m, &[42]).await;
    let telegram = m.bill("Telegram conversation (32 inbound events, no polling)", 0);

    // ---- Telegram at channel-webhook's function URL (FunctionUrls=true): the same calls
    // but API Gateway's requests and access log.
    let mut m = Metered::start(logs.clone(), None).await;
    m.function_urls = true;
    telegram_chats(&mut m, &[42]).await;
    let telegram_url = m.bill("Telegram conversation at the function URL (32 inbound events)", 0);

    // ---- Widget: the same conversation, polling on the widget's schedule.
    let mut m = Metered::start(logs.clone(), None).await;
    let mut w = start_widget(&mut m).await;
    let polls = widget_conversation(&mut m, &mut w, polls_in_gap).await;
    let widget = m.bill("Web widget conversation (32 inbound events, polling)", polls);

    // ---- Widget with the WebSocket API: every message pushed, polling behind the socket;
    // then the same with widget-api at its function URL (the socket stays API Gateway's).
    let sockets = FakeSocketApi::start("test", "test", "us-east-1").await;
    let pushed = socket_widget(&logs, &sockets, "L0SM9cOFvHcCIhw=", false).await;
    let pushed_url = socket_widget(&logs, &sockets, "L0SM9cOFvHcCIhx=", true).await;

    // ---- Telegram, busy: the same conversation in BUSY chats at once, each step taken by
    // every chat before the event source drains the queue, so batches hold one record per
    // chat (at least a few conversations a second: the event source then finds several
    // records per receive). The run takes longer than one conversation, so its timers are
    // longer: they must not fire in the middle, as they would not in a real conversation.
    let mut m = Metered::start_with(logs.clone(), None, (10, 20)).await;
    let busy = busy_telegram(&mut m).await;
    let records = busy_records(&m);
    println!("\n(busy run: {BUSY} chats at once, {records:.1} records per conversation-worker batch)");
    let mut m = Metered::start_with(logs.clone(), None, (10, 20)).await;
    m.function_urls = true;
    let busy_url = busy_telegram(&mut m).await;

    println!(
        "\nTelegram: ${:.4} per 1,000 conversations ({BUSY} at once: ${:.4}; at the function URL: ${:.4}, \
         {BUSY} at once: ${:.4}); \
         widget polling: ${:.4}; widget with WebSocket pushes: ${:.4} (at the function URL: ${:.4}); \
         target ${TARGET_PER_1000}",
        telegram.dollars * 1000.0,
        busy.dollars * 1000.0,
        telegram_url.dollars * 1000.0,
        busy_url.dollars * 1000.0,
        widget.dollars * 1000.0,
        pushed.dollars * 1000.0,
        pushed_url.dollars * 1000.0
    );
    // The stack's default front door for the channels' and desks' webhooks (FunctionUrls).
    let webhook_urls = template_default("FunctionUrls");
    let (by_default, door) = match webhook_urls.as_str() {
        "none" | "false" => (&telegram, "the HTTP API"),
        _ => (&telegram_url, "their function URLs"),
    };
    println!(
        "Telegram with the stack's defaults (FunctionUrls={webhook_urls}: webhooks at {door}): ${:.4} per 1,000 \
         conversations",
        by_default.dollars * 1000.0
    );
    // The floor of this shape (queue-buffered, stateful, exactly once): per inbound event one
    // API request, an ingress and a worker invocation, a send, a receive and a delete on the
    // queue, one read and one write of the conversation's state; nothing else.
    let floor_per_event = |batch: f64| {
        price::API_REQUEST
            + (1.0 + 1.0 / batch) * price::LAMBDA_REQUEST
            + (1.0 + 2.0 / batch) * price::SQS_FIFO_REQUEST
            + price::DYNAMO_READ_UNIT
            + price::DYNAMO_WRITE_UNIT
    };
    let floor = INBOUND_EVENTS as f64 * floor_per_event(1.0);
    // Busy, a worker invocation, a receive and a delete serve a batch of up to 10 events.
    let busy_floor = INBOUND_EVENTS as f64 * floor_per_event(10.0);
    println!(
        "floor: ${:.4} per 1,000 conversations, ${:.4} in batches of 10; Telegram / floor = {:.1}x, \
         busy / floor in batches = {:.1}x",
        floor * 1000.0,
        busy_floor * 1000.0,
        telegram.dollars / floor,
        busy.dollars / busy_floor
    );
    // Ceilings: the last measured bill, plus about 10% (on 2026-12-06, after the deflated
    // session, trace lines out of transactions, unindexed new effects, the configuration
    // cache, unrecorded timer cancels, one trace item per step, effect results stepped on in
    // their drain, timers scheduled with their commit, FAQ answers committed with their
    // question, the seen id written after the commit, the outbox inside the session item,
    // the drain lease on it, the release folded into the last completion and the `due` index
    // key left where it is, stale timers dropped by timeout-check: write units 157-160, read
    // units 157 with the sweeper's run and timeout-check's reads, SQS requests 168-172 now
    // that every delayed timer message is waited for; before, a run stopped at the first
    // moment no message was visible, and the later stale timers went unbilled). On
    // 2026-12-06 (late), with one timer message in flight per session and the event source's empty
    // receives out of the per-conversation bill: read units 148, SQS requests 100 (the SQS
    // ceiling leaves room for a slower machine, on which the first timer message comes back
    // during the human's replies and a few more are sent; every human message sending one,
    // as before, would be 129). Later, with inline effects in their compact form (layout 3):
    // write units 148, busy too (the session's writes over 1 KB went from 15 to 6 of 69). On
    // 2026-12-07, with each seen mark carrying its event's trace lines and the drain starting
    // from its own commit's claim: write units 116, read units 116; with Telegram updates
    // newer than the session's highest asked about without a read, read units 96; with a new
    // desk link written by plain puts (not a transaction), write units 113; with the kept
    // agent config and desk status read eventually consistent, read units 94. Later, with a
    // drain's release and completions recorded at its event's seen mark: write units 82. A
    // change that adds calls or bigger items per event fails here; one that saves lowers them.
    assert_eq!(telegram.api_requests, INBOUND_EVENTS, "one API request per inbound event");
    assert!(telegram.write_units <= 90.0, "DynamoDB write units grew: {}", telegram.write_units);
    assert!(telegram.read_units <= 104.0, "DynamoDB read units grew: {}", telegram.read_units);
    assert!(telegram.sqs_requests <= 120, "SQS requests grew: {}", telegram.sqs_requests);
    // Busy, the event source's receives and deletes are shared by the chats of a batch.
    assert!(records >= 5.0, "batches of {records:.1} records");
    assert!(busy.dollars < telegram.dollars, "busy ${} against ${}", busy.dollars, telegram.dollars);
    assert_eq!(busy.api_requests, INBOUND_EVENTS);
    // At the function URL only API Gateway's part goes: its requests and access log lines.
    for (run, at_url, through_api) in
        [("Telegram", &telegram_url, &telegram), ("busy", &busy_url, &busy), ("widget", &pushed_url, &pushed)]
    {
        assert_eq!(at_url.api_requests, 0, "{run}: no API Gateway request at the function URL");
        assert!(
            at_url.dollars < through_api.dollars,
            "{run}: ${} at the function URL against ${} through the HTTP API",
            at_url.dollars,
            through_api.dollars
        );
    }
    let api_part = INBOUND_EVENTS as f64 * price::API_REQUEST;
    assert!(telegram_url.dollars < telegram.dollars - 0.9 * api_part, "Telegram saves its API requests");
}

/// The widget conversation over the stack's WebSocket API, on `connection`: every message
/// pushed, the widget polling once when its socket opens and every 60 s over the timeline
/// (no reconnect: the conversation is shorter than API Gateway's 10 idle minutes between
/// messages and its 2-hour limit). Checks that every message logged was pushed, once.
async fn socket_widget(logs: &LogMeter, sockets: &FakeSocketApi, connection: &str, function_urls: bool) -> Bill {
    let mut m = Metered::start(logs.clone(), Some(sockets.url())).await;
    m.function_urls = function_urls;
    let mut w = start_widget(&mut m).await;
    m.connect(connection, &w.token.clone()).await;
    sockets.open(connection);
    let before = sockets.pushes().len();
    let mut polls = do_polls(&mut m, &mut w, 1).await;
    polls += widget_conversation(&mut m, &mut w, |_, _| 0).await;
    polls += do_polls(&mut m, &mut w, (TIMELINE_SECS / 60.0) as usize).await;
    let logged = m.hub.aws.store.after(&widget_key(&w.token), 0, 1000).await.expect("the widget's log");
    let pushes = sockets.pushes().len() - before;
    assert_eq!(pushes, logged.len(), "one push per logged message");
    assert!(sockets.bad_signatures().is_empty(), "{:?}", sockets.bad_signatures());
    m.ledger.socket_messages += pushes;
    m.ledger.socket_minutes = (TIMELINE_SECS / 60.0).ceil();
    let at = if function_urls { " at widget-api's function URL" } else { "" };
    m.bill(&format!("Web widget conversation{at} (32 inbound events, WebSocket pushes)"), polls)
}

/// Chats in the busy run.
const BUSY: usize = 10;

/// The Telegram conversation in `BUSY` chats at once; its bill per conversation.
async fn busy_telegram(m: &mut Metered) -> Bill {
    let chats: Vec<i64> = (0..BUSY as i64).map(|i| 1000 + i).collect();
    telegram_chats(m, &chats).await;
    let at = if m.function_urls { " at the function URL" } else { "" };
    m.bill_of(&format!("Telegram conversation, {BUSY} chats at once{at} (per conversation)"), 0, BUSY)
}

/// The typical conversation in each of `chats` at once: every chat takes each step, then the
/// event source drains the queue. Checks that every chat got its answers, once.
async fn telegram_chats(m: &mut Metered, chats: &[i64]) {
    let mut update = 0;
    for i in 0..10 {
        for &chat in chats {
            update += 1;
            m.telegram_says(chat, update, QUESTIONS[i % 3]).await;
        }
        m.worker().await;
    }
    for &chat in chats {
        update += 1;
        m.telegram_says(chat, update, "I want to talk to a human").await;
    }
    m.worker().await;
    // Each chat's desk conversation, by the user its establish names.
    let establishes = m.hub.desk.requests_to("/conversation/establish");
    let desk_conversation = |chat: i64| {
        let user = chat.to_string();
        establishes
            .iter()
            .find(|r| r.body["user_info"]["user_id"] == user.as_str())
            .and_then(|r| r.body["conversation_id"].as_str())
            .unwrap_or_else(|| panic!("no desk conversation for chat {chat}"))
            .to_string()
    };
    let desk: Vec<String> = chats.iter().map(|&c| desk_conversation(c)).collect();
    for i in 0..10 {
        for conv in &desk {
            m.human_says(conv, i, &format!("Human reply {i}")).await;
        }
        m.worker().await;
        for &chat in chats {
            update += 1;
            m.telegram_says(chat, update, &format!("User reply {i}")).await;
        }
        m.worker().await;
    }
    for conv in &desk {
        m.human_ends(conv).await;
    }
    m.worker().await;
    m.timers().await;

    let sent = m.telegram.sent_messages();
    let texts: Vec<&str> = sent.iter().filter_map(|s| s["text"].as_str()).collect();
    let answers = [common::HOURS, common::SHIPPING, common::ABROAD];
    assert_eq!(texts.iter().filter(|t| answers.contains(t)).count(), 10 * chats.len(), "{texts:#?}");
    assert_eq!(texts.iter().filter(|t| t.starts_with("Human reply")).count(), 10 * chats.len(), "{texts:#?}");
    assert_eq!(m.hub.desk.count_to("/chat"), 10 * chats.len());
    assert_eq!(m.hub.desk.duplicates(), 0);
}

/// Records per conversation-worker invocation in the run so far.
fn busy_records(m: &Metered) -> f64 {
    let batches = m.ledger.invocations.get("conversation-worker").map_or(0, Vec::len);
    m.ledger.worker_records as f64 / batches.max(1) as f64
}

/// A widget session (`POST /session`, the e-mail given by the page).
async fn start_widget(m: &mut Metered) -> WidgetUser {
    let session = ApiRequest::new("POST", "/api/widget/shop/session").json(&json!({"email": "ana@example.com"}));
    let r = m.api("widget-api", session).await;
    assert_eq!(r.status, 200, "{r:?}");
    WidgetUser { token: r.body["token"].as_str().expect("a widget token").to_string(), cursor: 0 }
}

/// The typical conversation on the widget, the timers firing after it. After each message
/// the widget polls `polls_in(gap, hot)` times before the next one (`hot`: a human is on or
/// about to be). Returns how many polls it made.
async fn widget_conversation(m: &mut Metered, w: &mut WidgetUser, polls_in: fn(f64, bool) -> usize) -> usize {
    let mut polls = 0;
    for i in 0..10 {
        send_widget(m, w, i, QUESTIONS[i % 3]).await;
        m.worker().await;
        polls += do_polls(m, w, polls_in(USER_THINKS, false)).await;
    }
    send_widget(m, w, 10, "I want to talk to a human").await;
    m.worker().await;
    polls += do_polls(m, w, polls_in(HUMAN_PICKS_UP, true)).await;
    let establish = m.hub.desk.first_to("/conversation/establish").await;
    let conv = establish.body["conversation_id"].as_str().expect("a desk conversation id").to_string();
    for i in 0..10 {
        m.human_says(&conv, i, &format!("Human reply {i}")).await;
        m.worker().await;
        polls += do_polls(m, w, polls_in(TURN, true)).await;
        send_widget(m, w, 11 + i, &format!("User reply {i}")).await;
        m.worker().await;
        polls += do_polls(m, w, polls_in(TURN, true)).await;
    }
    m.human_ends(&conv).await;
    m.worker().await;
    m.timers().await;
    assert_eq!(m.hub.desk.count_to("/chat"), 10);
    polls
}

/// The widget conversation a token opens (`{user}.{signature}`).
fn widget_key(token: &str) -> baton_core::ConversationKey {
    let user = token.rsplit_once('.').map_or(token, |(u, _)| u);
    baton_core::ConversationKey::new("shop", baton_core::Channel::Widget, user).expect("a widget key")
}

/// The widget's side: its conversation token and message cursor.
struct WidgetUser {
    token: String,
    cursor: i64,
}

async fn send_widget(m: &mut Metered, w: &WidgetUser, n: usize, text: &str) {
    let req = ApiRequest::new("POST", "/api/widget/shop/messages")
        .bearer(&w.token)
        .json(&json!({"text": text, "client_id": format!("c{n}")}));
    let r = m.api("widget-api", req).await;
    assert_eq!(r.status, 202, "{r:?}");
}

/// `n` polls of the message log, moving the cursor as the widget does. The widget polls at
/// most once a second, so an instance's per-conversation rate limit never sees them all at
/// once as it would here: each poll gets a fresh router (a fresh limiter), the rest of the
/// function stays the same.
async fn do_polls(m: &mut Metered, w: &mut WidgetUser, n: usize) -> usize {
    for _ in 0..n {
        m.hub.widget_api = http_router(&m.hub.aws, Routes::Widget);
        let path = format!("/api/widget/shop/messages?after={}", w.cursor);
        let r = m.api("widget-api", ApiRequest::new("GET", &path).bearer(&w.token)).await;
        assert_eq!(r.status, 200, "{r:?}");
        if let Some(c) = r.body["cursor"].as_i64() {
            w.cursor = c;
        }
    }
    n
}

#[test]
fn the_poll_schedule_matches_the_widget() {
    // 1 + 1.5 + 2.25 + 3.375 + 5.063 = 13.2 s: five polls in a 20 s gap.
    assert_eq!(polls_in_gap(20.0, false), 5);
    assert_eq!(polls_in_gap(0.5, false), 0);
    assert_eq!(polls_in_gap(30.0, true), 30);
}

#[test]
fn access_log_lines_follow_the_template_and_are_json() {
    let line = access_log_line("POST", "POST /channels/telegram/shop", 200, 2);
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("an access log line is JSON");
    assert_eq!(parsed["status"], "200");
    assert_eq!(parsed["route"], "POST /channels/telegram/shop");
    assert!(line.len() > 200 && line.len() < 400, "{} bytes: {line}", line.len());
    assert!(["WARN", "INFO", "DEBUG"].contains(&template_default("PlatformLogLevel").as_str()));
}
