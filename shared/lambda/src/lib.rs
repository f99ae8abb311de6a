//! The Lambda side of Baton: the AWS adapters wired into the runtime once per cold start,
//! and the handlers each function binary runs. A function's `main.rs` only calls one of
//! [`serve_http`], [`serve_events`], [`serve_timers`] or [`serve_sweeper`].
//!
//! - HTTP ingress (widget API, desk webhooks): verify, enqueue on the FIFO queue, answer.
//! - `conversation-worker`: apply each SQS FIFO record, run its effects; failures are
//!   reported per record, and after a failed record every later record of the same message
//!   group in the batch is reported failed too, so per-conversation order holds.
//! - `timeout-check`: turn due timer messages into `TimerFired` events (or re-arm them).
//! - `timeout-sweeper`: every minute, queue what the timer queue missed (overdue sessions,
//!   effects due for a retry).

use aws_lambda_events::event::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use baton_aws::{DynamoStore, SocketEndpoint, SocketPush, SqsEventQueue, SqsTimers};
use baton_connectors::outbound::Targets;
use baton_core::ports::LivePush;
use baton_core::ports::{Clock, EventQueue, Store};
use baton_core::{Event, EventKind};
pub use baton_runtime::http::Routes;
use baton_runtime::http::{AppState, Limits, SourceIp};
use baton_runtime::widget::TokenSigner;
use baton_runtime::worker::{apply_event, drain_outbox};
use baton_runtime::{Connectors, Ports};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Per-request timeout of calls to desks, tickets and other providers.
const OUTBOUND_TIMEOUT: Duration = Duration::from_secs(15);
/// A conversation's effects are run under a lease longer than the worker's 60 s timeout, so
/// a worker that dies holding it frees it by the time SQS redelivers.
const DRAIN_LEASE: Duration = Duration::from_secs(90);

/// Agent configs and desk statuses are reused this long by default (`Config::config_cache`).
pub const DEFAULT_CONFIG_CACHE: Duration = Duration::from_secs(5);

/// `BATON_CONFIG_CACHE_SECS`: unset or empty for the default, else 0 to 300 seconds.
fn config_cache_secs(value: Option<&str>) -> Result<Duration, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(DEFAULT_CONFIG_CACHE),
        Some(v) => match v.parse::<u64>() {
            Ok(secs) if secs <= 300 => Ok(Duration::from_secs(secs)),
            _ => Err(format!("BATON_CONFIG_CACHE_SECS must be 0 to 300 seconds, got {v:?}")),
        },
    }
}

/// Deployment settings, from the function's environment (set by template.yaml).
#[derive(Debug, Clone)]
pub struct Config {
    pub table: String,
    pub events_queue_url: String,
    pub timers_queue_url: String,
    pub widget_secret: String,
    pub body_limit: usize,
    /// The API's public URL (a custom domain) for media links; `None`: the host API Gateway
    /// was reached at.
    pub public_url: Option<String>,
    /// How long agent configs and desk statuses read from the table are reused
    /// (`BATON_CONFIG_CACHE_SECS`, 5 by default, 0 for none): a change is seen by every
    /// function instance within this time.
    pub config_cache: Duration,
    /// Let agents call loopback, private and link-local addresses (`BATON_ALLOW_PRIVATE_TARGETS=true`):
    /// only for a deployment whose desks live inside its own network. Off by default, so
    /// a configured URL cannot reach the function's runtime API or the VPC.
    pub allow_private_targets: bool,
    /// API Gateway's management endpoint of the widget's WebSocket API
    /// (`BATON_WIDGET_SOCKET_URL`, `https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`):
    /// messages for the widget are pushed to its connections. `None`: the widget polls.
    pub widget_socket_url: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Config, Error> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("environment variable {name} is not set"));
        Ok(Config {
            table: var("BATON_TABLE")?,
            events_queue_url: var("BATON_EVENTS_QUEUE_URL")?,
            timers_queue_url: var("BATON_TIMERS_QUEUE_URL")?,
            widget_secret: var("BATON_WIDGET_SECRET").unwrap_or_default(),
            body_limit: std::env::var("BATON_BODY_LIMIT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(baton_runtime::http::DEFAULT_BODY_LIMIT),
            public_url: std::env::var("BATON_PUBLIC_URL").ok().filter(|v| !v.trim().is_empty()),
            config_cache: config_cache_secs(std::env::var("BATON_CONFIG_CACHE_SECS").ok().as_deref())?,
            widget_socket_url: std::env::var("BATON_WIDGET_SOCKET_URL").ok().filter(|v| !v.trim().is_empty()),
            allow_private_targets: match std::env::var("BATON_ALLOW_PRIVATE_TARGETS").as_deref() {
                Ok("true" | "1") => true,
                Ok("false" | "0" | "") | Err(_) => false,
                Ok(other) => {
                    return Err(format!("BATON_ALLOW_PRIVATE_TARGETS must be true or false, got {other:?}").into())
                }
            },
        })
    }
}

/// Everything a function needs, built once per cold start.
#[derive(Clone)]
pub struct Aws {
    pub ports: Ports,
    pub salesiq: baton_connectors::salesiq::api::SalesiqClient,
    pub intercom: baton_connectors::intercom::IntercomClient,
    pub livechat: baton_connectors::livechat::LivechatClient,
    pub media: baton_runtime::media::MediaFetcher,
    /// The outbound client every connector shares.
    pub http: baton_connectors::outbound::HttpClient,
    pub store: Arc<DynamoStore>,
    pub events: Arc<SqsEventQueue>,
    pub timers: Arc<SqsTimers>,
    pub config: Config,
}

/// Wire the adapters: clients are passed in so they are built once per cold start.
pub fn wire(
    config: Config,
    clock: Arc<dyn Clock>,
    dynamo: baton_aws::aws_sdk_dynamodb::Client,
    sqs: baton_aws::aws_sdk_sqs::Client,
    secrets: Arc<dyn baton_core::ports::Secrets>,
) -> Aws {
    // Pushes to the widget's WebSockets are signed with the function's role, whose
    // credentials Lambda puts in the environment, for the table's region.
    let region = dynamo.config().region().map(|r| r.to_string());
    let store = Arc::new(
        DynamoStore::new(dynamo, config.table.clone())
            .with_config_cache(config.config_cache)
            .with_drain_lease(DRAIN_LEASE)
            // `process` flushes after every event.
            .with_marks_behind_effects(),
    );
    let events = Arc::new(SqsEventQueue::new(sqs.clone(), config.events_queue_url.clone()));
    let timers = Arc::new(SqsTimers::new(sqs, config.timers_queue_url.clone(), clock.clone()));
    let live: Arc<dyn LivePush> = match (&config.widget_socket_url, region) {
        (Some(url), Some(region)) => {
            Arc::new(SocketPush::new(store.clone(), SocketEndpoint::with_environment_credentials(url, region)))
        }
        // Without a WebSocket API the widget polls; nothing reads live.
        _ => Arc::new(baton_runtime::widget::LiveStreams(tokio::sync::broadcast::channel(1).0)),
    };
    let targets = if config.allow_private_targets { Targets::Any } else { Targets::PublicOnly };
    let connectors = Connectors::new(OUTBOUND_TIMEOUT, targets, store.clone(), clock.clone(), store.clone(), live);
    let ports = Ports {
        store: store.clone(),
        queue: events.clone(),
        timers: timers.clone(),
        clock: clock.clone(),
        brain: Arc::new(baton_brains::Brains::new(connectors.http.clone(), store.clone(), clock.clone())),
        channels: connectors.channels.clone(),
        desk: connectors.desk.clone(),
        fallback: connectors.fallback.clone(),
        secrets,
        kv: store.clone(),
        alerts: Default::default(),
        targets,
        drain_lease: Some((DRAIN_LEASE, store.clone())),
    };
    Aws {
        ports,
        salesiq: connectors.salesiq.clone(),
        intercom: connectors.intercom.clone(),
        livechat: connectors.livechat.clone(),
        media: connectors.media.clone(),
        http: connectors.http.clone(),
        store,
        events,
        timers,
        config,
    }
}

/// Build from the environment: SDK clients from the Lambda role, settings from env vars.
pub async fn from_env() -> Result<Aws, Error> {
    let config = Config::from_env()?;
    // One configuration load for all three clients.
    let sdk = baton_aws::sdk_config().await;
    let dynamo = baton_aws::aws_sdk_dynamodb::Client::new(&sdk);
    let sqs = baton_aws::aws_sdk_sqs::Client::new(&sdk);
    let secrets = Arc::new(baton_aws::SsmSecrets::new(baton_aws::aws_sdk_ssm::Client::new(&sdk)));
    Ok(wire(config, Arc::new(baton_runtime::clock::SystemClock), dynamo, sqs, secrets))
}

/// HTTP routes over the AWS adapters: the widget API, the desk webhooks or the channel webhooks.
pub fn http_router(aws: &Aws, routes: Routes) -> axum::Router {
    baton_runtime::http::router_for(app_state(aws), routes).layer(axum::middleware::map_request(source_ip))
}

/// What the HTTP handlers (and the widget's `$connect`) work with.
fn app_state(aws: &Aws) -> AppState {
    AppState {
        ports: aws.ports.clone(),
        log: aws.store.clone(),
        live: tokio::sync::broadcast::channel(16).0,
        signer: TokenSigner::new(aws.config.widget_secret.as_bytes()),
        limits: Arc::new(Limits::default()),
        body_limit: aws.config.body_limit,
        salesiq: aws.salesiq.clone(),
        intercom: aws.intercom.clone(),
        livechat: aws.livechat.clone(),
        media: Arc::new(baton_runtime::media::MediaFiles {
            links: baton_runtime::media::MediaLinks::new(
                aws.config.widget_secret.as_bytes(),
                aws.config.public_url.clone(),
            ),
            fetcher: aws.media.clone(),
        }),
        http: aws.http.clone(),
    }
}

/// The widget's WebSocket API (`widget-socket`): `$connect` checks the widget the way its
/// HTTP calls are checked (agent, origin, rate, the conversation token from `?token=`) and
/// records the connection for the worker's pushes; any other status than 200 refuses the
/// connection. No other route reaches the function. Built once per cold start, like a
/// router, so its rate limits span invocations.
pub struct SocketHandler {
    aws: Aws,
    state: AppState,
}

impl SocketHandler {
    pub fn new(aws: &Aws) -> SocketHandler {
        SocketHandler { aws: aws.clone(), state: app_state(aws) }
    }

    pub async fn handle(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        connect(&self.aws, &self.state, event).await
    }
}

async fn connect(aws: &Aws, state: &AppState, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
    let ctx = &event.request_context;
    let (Some(route), Some(connection)) = (ctx.route_key.as_deref(), ctx.connection_id.as_deref()) else {
        return socket_reply(400, "not an API Gateway WebSocket event");
    };
    if route != "$connect" {
        return socket_reply(200, "");
    }
    let query = |name: &str| event.query_string_parameters.first(name).map(str::to_string);
    let Some(agent) = query("agent") else {
        return socket_reply(400, "missing ?agent=");
    };
    let client = ctx.identity.source_ip.clone().unwrap_or_default();
    let key = match baton_runtime::http::widget::authorize_socket(
        state,
        &agent,
        &event.headers,
        query("token").as_deref(),
        &client,
    )
    .await
    {
        Ok(key) => key,
        Err(e) => return socket_reply(e.status.as_u16(), &e.message),
    };
    let connected_at = if ctx.connected_at > 0 { baton_core::Millis(ctx.connected_at) } else { aws.ports.clock.now() };
    match aws.store.add_socket(&key, connection, connected_at).await {
        Ok(()) => socket_reply(200, ""),
        Err(e) => {
            tracing::error!(conversation = %key, error = %e, "widget connection not recorded");
            socket_reply(503, "storage is unavailable; retry later")
        }
    }
}

fn socket_reply(status: u16, message: &str) -> ApiGatewayProxyResponse {
    let mut reply = ApiGatewayProxyResponse::default();
    reply.status_code = i64::from(status);
    reply.body = (!message.is_empty()).then(|| aws_lambda_events::encodings::Body::Text(message.to_string()));
    reply
}

/// Put API Gateway's view of the caller's IP where the routes look for it.
async fn source_ip(mut req: axum::extract::Request) -> axum::extract::Request {
    use lambda_http::request::RequestContext;
    let ip = match req.extensions().get::<RequestContext>() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.http.source_ip.clone(),
        _ => None,
    };
    if let Some(ip) = ip {
        req.extensions_mut().insert(SourceIp(ip));
    }
    req
}

/// One batch of the events FIFO queue. Returns the records to retry.
pub async fn handle_events(aws: &Aws, batch: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let mut failed_groups: HashSet<String> = HashSet::new();
    for record in batch.records {
        let id = record.message_id.clone().unwrap_or_default();
        let group = record.attributes.get("MessageGroupId").cloned().unwrap_or_default();
        if failed_groups.contains(&group) {
            response.add_failure(id);
            continue;
        }
        let body = record.body.as_deref().unwrap_or("");
        let ok = match baton_aws::parse_event(body) {
            Ok(event) => process(aws, &event).await,
            Err(e) => {
                // Retried until it lands in the dead-letter queue, where an alarm fires.
                tracing::error!(message_id = %id, error = %e, "unreadable event");
                false
            }
        };
        if !ok {
            failed_groups.insert(group);
            response.add_failure(id);
        }
    }
    response
}

/// Apply one event and run the conversation's effects, then write its seen mark with the
/// trace lines of both (one item). A mark not written fails the event: it comes back, finds
/// itself as its session's last event, and is marked then.
async fn process(aws: &Aws, event: &Event) -> bool {
    let ok = step_and_drain(aws, event).await;
    match aws.store.flush_trace().await {
        Ok(()) => ok,
        Err(e) => {
            tracing::error!(conversation = %event.conversation, event = %event.id, error = %e, "event not marked seen; it will be retried");
            false
        }
    }
}

/// Re-arms a wake-up through the timer queue when an effect waits for a retry, so no worker
/// ever sleeps.
async fn step_and_drain(aws: &Aws, event: &Event) -> bool {
    let key = &event.conversation;
    if let Err(e) = apply_event(&aws.ports, event).await {
        tracing::error!(conversation = %key, event = %event.id, error = %e, "event failed");
        return false;
    }
    match drain_outbox(&aws.ports, key).await {
        Ok(d) => {
            if let Some(due) = d.next_due {
                if let Err(e) = aws.timers.schedule_wake(key, due).await {
                    // The sweeper finds the due effects within a minute anyway.
                    tracing::warn!(conversation = %key, error = %e, "could not re-arm a retry");
                }
            }
            true
        }
        Err(e) => {
            tracing::error!(conversation = %key, error = %e, "running effects failed");
            false
        }
    }
}

/// One batch of the timer queue.
pub async fn handle_timers(aws: &Aws, batch: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let now = aws.ports.clock.now();
    for record in batch.records {
        let id = record.message_id.clone().unwrap_or_default();
        let body = record.body.as_deref().unwrap_or("");
        match aws.timers.fire_or_rearm(body, now, aws.events.as_ref(), Some(aws.store.as_ref())).await {
            Ok(outcome) => tracing::debug!(message_id = %id, ?outcome, "timer handled"),
            Err(e) => {
                tracing::error!(message_id = %id, error = %e, "timer failed");
                response.add_failure(id);
            }
        }
    }
    response
}

/// What one sweep queued.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub timers: usize,
    pub wakes: usize,
}

/// Queue what the timer queue missed: sessions whose timer is overdue (same event id as the
/// timer queue would use, so a timer fired twice is applied once) and conversations whose
/// effects are due for a retry.
pub async fn sweep(aws: &Aws) -> Result<Swept, Error> {
    let now = aws.ports.clock.now();
    let mut events = Vec::new();
    for (key, generation) in aws.store.sessions_due(now, 1000).await? {
        let id = format!("timer:{key}:{generation}");
        events.push(Event::new(id, key, now, EventKind::TimerFired { generation }));
    }
    let timers = events.len();
    for key in aws.store.conversations_with_due_effects(now, 1000).await? {
        // One wake per conversation and minute is enough.
        let id = format!("wake:{key}:{}", now.0 / 60_000);
        events.push(Event::new(id, key, now, EventKind::Wake));
    }
    let wakes = events.len() - timers;
    for chunk in events.chunks(10) {
        aws.events.enqueue(chunk.to_vec()).await?;
    }
    Ok(Swept { timers, wakes })
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).json().without_time().try_init();
}

/// The routes of one HTTP function, as a type: the route set is then a constant in the
/// function's `main`, and the linker drops the handlers of the other functions' routes
/// (a run-time value kept every route group in every HTTP function).
pub trait RouteSet {
    const ROUTES: Routes;
}

/// `widget-api`.
pub struct WidgetRoutes;
impl RouteSet for WidgetRoutes {
    const ROUTES: Routes = Routes::Widget;
}

/// `desk-webhook`.
pub struct DeskRoutes;
impl RouteSet for DeskRoutes {
    const ROUTES: Routes = Routes::Desk;
}

/// `channel-webhook`.
pub struct ChannelRoutes;
impl RouteSet for ChannelRoutes {
    const ROUTES: Routes = Routes::Channels;
}

/// `agent-api`.
pub struct AgentApiRoutes;
impl RouteSet for AgentApiRoutes {
    const ROUTES: Routes = Routes::AgentApi;
}

/// `main` of an HTTP function serving the routes of `R`.
pub async fn serve_http<R: RouteSet>() -> Result<(), Error> {
    init_logging();
    let aws = from_env().await?;
    // A short key would let anyone forge widget conversation tokens.
    if matches!(R::ROUTES, Routes::Widget | Routes::Channels | Routes::All) && aws.config.widget_secret.len() < 32 {
        return Err("BATON_WIDGET_SECRET must be at least 32 characters".into());
    }
    lambda_http::run(http_router(&aws, R::ROUTES)).await
}

/// `main` of `conversation-worker`.
pub async fn serve_events() -> Result<(), Error> {
    init_logging();
    let aws = Arc::new(from_env().await?);
    lambda_runtime::run(lambda_runtime::service_fn(move |e: lambda_runtime::LambdaEvent<SqsEvent>| {
        let aws = aws.clone();
        // Boxed: the batch's future (a step, its drain, the steps that drain applies) is too
        // deep to be laid out inside `main`'s future within the compiler's query depth.
        async move { Ok::<_, Error>(Box::pin(handle_events(&aws, e.payload)).await) }
    }))
    .await
}

/// `main` of `timeout-check`.
pub async fn serve_timers() -> Result<(), Error> {
    init_logging();
    let aws = Arc::new(from_env().await?);
    lambda_runtime::run(lambda_runtime::service_fn(move |e: lambda_runtime::LambdaEvent<SqsEvent>| {
        let aws = aws.clone();
        async move { Ok::<_, Error>(handle_timers(&aws, e.payload).await) }
    }))
    .await
}

/// `main` of `widget-socket` (the widget's WebSocket API, `$connect`).
pub async fn serve_socket() -> Result<(), Error> {
    init_logging();
    let handler = Arc::new(SocketHandler::new(&from_env().await?));
    lambda_runtime::run(lambda_runtime::service_fn(
        move |e: lambda_runtime::LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let handler = handler.clone();
            async move { Ok::<_, Error>(handler.handle(e.payload).await) }
        },
    ))
    .await
}

/// `main` of `timeout-sweeper` (EventBridge schedule; the event's content is not used).
pub async fn serve_sweeper() -> Result<(), Error> {
    init_logging();
    let aws = Arc::new(from_env().await?);
    lambda_runtime::run(lambda_runtime::service_fn(move |_: lambda_runtime::LambdaEvent<serde_json::Value>| {
        let aws = aws.clone();
        async move {
            let swept = sweep(&aws).await?;
            tracing::info!(timers = swept.timers, wakes = swept.wakes, "sweep done");
            Ok::<_, Error>(serde_json::json!({"timers": swept.timers, "wakes": swept.wakes}))
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_cache_setting_is_checked() {
        assert_eq!(config_cache_secs(None), Ok(DEFAULT_CONFIG_CACHE));
        assert_eq!(config_cache_secs(Some(" ")), Ok(DEFAULT_CONFIG_CACHE));
        assert_eq!(config_cache_secs(Some("0")), Ok(Duration::ZERO));
        assert_eq!(config_cache_secs(Some("30")), Ok(Duration::from_secs(30)));
        for bad in ["301", "-1", "5s", "1.5"] {
            let err = config_cache_secs(Some(bad)).unwrap_err();
            assert!(err.contains("BATON_CONFIG_CACHE_SECS") && err.contains(bad), "{err}");
        }
    }
}
