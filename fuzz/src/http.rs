//! The whole HTTP surface of `baton serve`, in process on loopback: every route with
//! arbitrary bodies, queries and headers, authenticated or not. Whatever arrives, the
//! answer is a 2xx, 3xx or 4xx with a reason, or 503 (a dependency unavailable): never
//! another 5xx, a dropped connection or a hang.
//!
//! Input: byte 0 picks the route, byte 1 the options (bit 0: authenticate as the route
//! expects; bit 1: no JSON content type), then `query '\n' body` as in [`crate::split`].

use crate::{agent, salesiq_signer, split, INTERCOM_SECRET, LINE_SECRET, TELEGRAM_SECRET, WHATSAPP_APP_SECRET};
use baton_tests::{intercom, line, whatsapp};
use reqwest::Method;
use std::sync::OnceLock;
use std::time::Duration;

/// How a route authenticates a caller.
#[derive(Clone, Copy, Debug)]
enum Auth {
    None,
    /// `Authorization: Bearer <agent token>` (and the Agent API's `botid`).
    AgentToken,
    /// The widget session's bearer token.
    Widget,
    /// The operator's console cookie.
    Console,
    Telegram,
    Line,
    Whatsapp,
    Intercom,
    Salesiq,
}

/// Every route of `baton serve` (paths with the fuzz agent filled in).
const ROUTES: &[(&str, &str, Auth)] = &[
    ("GET", "/healthz", Auth::None),
    ("GET", "/", Auth::None),
    ("GET", "/widget/fz", Auth::None),
    ("POST", "/converse/chat", Auth::AgentToken),
    ("POST", "/channels/telegram/fz", Auth::Telegram),
    ("POST", "/channels/line/fz", Auth::Line),
    ("GET", "/channels/whatsapp/fz", Auth::None),
    ("POST", "/channels/whatsapp/fz", Auth::Whatsapp),
    ("POST", "/desks/webhook/fz/v1/human/message/receive", Auth::AgentToken),
    ("POST", "/desks/webhook/fz/v1/human/close", Auth::AgentToken),
    ("GET", "/api/agents/fz/desk/status", Auth::AgentToken),
    ("POST", "/brains/hosted/fz/0123456789abcdefghijklmn/converse", Auth::None),
    ("POST", "/brains/hosted/fz/0123456789abcdefghijklmn/actions", Auth::None),
    ("POST", "/desks/intercom/fz", Auth::Intercom),
    ("POST", "/desks/livechat/fz", Auth::None),
    ("POST", "/desks/salesiq/fz", Auth::Salesiq),
    ("GET", "/media/fz/telegram/abc", Auth::None),
    ("POST", "/api/widget/fz/session", Auth::None),
    ("POST", "/api/widget/fz/messages", Auth::Widget),
    ("GET", "/api/widget/fz/messages", Auth::Widget),
    ("POST", "/api/widget/fz/email", Auth::Widget),
    ("POST", "/api/widget/fz/end", Auth::Widget),
    ("OPTIONS", "/api/widget/fz/messages", Auth::None),
    ("GET", "/console/api/conversations", Auth::Console),
    ("GET", "/console/api/conversations/x", Auth::Console),
    ("POST", "/console/api/conversations/x/take", Auth::Console),
    ("POST", "/console/api/conversations/x/reply", Auth::Console),
    ("POST", "/console/api/conversations/x/end", Auth::Console),
    ("GET", "/console/api/status", Auth::Console),
    ("POST", "/console/login", Auth::None),
    ("POST", "/console/desk/conversation/establish", Auth::None),
    ("POST", "/console/desk/chat", Auth::None),
    ("POST", "/console/desk/conversation/close", Auth::None),
    ("POST", "/nowhere", Auth::None),
];

const CONSOLE_KEY: &str = "fuzz-operator-key-0123456789";

/// The hub and the credentials of its callers, started once per process.
struct Hub {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    agent_token: String,
    widget_token: String,
    console_cookie: String,
    _running: baton::serve::Running,
    _dir: tempfile::TempDir,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(start)
}

fn start() -> Hub {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = baton::serve::ServeOptions {
        // One client writes as fast as the fuzzer can: no rate limit may answer instead.
        rate_limits: baton_runtime::http::RateLimitConfig {
            per_ip_per_sec: 1e9,
            per_ip_burst: u32::MAX,
            per_conversation_per_sec: 1e9,
            per_conversation_burst: u32::MAX,
            auth_failures_per_sec: 1e9,
            auth_failures_burst: u32::MAX,
        },
        desk_probe: false,
        console_key: Some(CONSOLE_KEY.into()),
        ..baton::serve::ServeOptions::loopback(dir.path().join("fuzz.sqlite"))
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let (running, base, agent_token, widget_token, console_cookie) = rt.block_on(async {
        let clock = std::sync::Arc::new(baton_runtime::clock::SystemClock);
        let running = baton::serve::start(opts, clock).await.expect("the hub starts");
        running.ports.store.put_agent(agent()).await.expect("agent stored");
        let agent_token = baton_runtime::auth::generate_token();
        let hash = baton_runtime::auth::hash_token(&agent_token);
        running.ports.store.add_token("fz", &hash, baton_core::Millis(0)).await.expect("token");
        let base = format!("http://{}", running.addr);
        let widget_token = baton_tests::widget::WidgetClient::start(&base, "fz", None).await.token;
        let console_cookie = baton_tests::console_cookie(&base, CONSOLE_KEY).await;
        (running, base, agent_token, widget_token, console_cookie)
    });
    Hub { rt, http, base, agent_token, widget_token, console_cookie, _running: running, _dir: dir }
}

/// Send one fuzzed request; the status, or `None` when the request could not be built
/// (a query that is no URL).
pub fn send(data: &[u8]) -> Option<u16> {
    let (&route, rest) = data.split_first()?;
    let (&flags, rest) = rest.split_first().unwrap_or((&0, &[]));
    let (method, path, auth) = ROUTES[route as usize % ROUTES.len()];
    let (query, body) = split(rest);
    let hub = hub();
    let mut url = reqwest::Url::parse(&format!("{}{path}", hub.base)).expect("a route URL");
    if let Some(q) = query {
        url.set_query(Some(q));
    }
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    let mut req = hub.http.request(method, url).body(body.to_vec());
    if flags & 2 == 0 {
        req = req.header("content-type", "application/json");
    }
    if flags & 1 == 1 {
        req = match auth {
            Auth::None => req,
            Auth::AgentToken => req.bearer_auth(&hub.agent_token).header("botid", "fz"),
            Auth::Widget => req.bearer_auth(&hub.widget_token),
            Auth::Console => req.header("cookie", &hub.console_cookie),
            Auth::Telegram => req.header("x-telegram-bot-api-secret-token", TELEGRAM_SECRET),
            Auth::Line => req.header("x-line-signature", line::sign(LINE_SECRET, body)),
            Auth::Whatsapp => req.header("x-hub-signature-256", whatsapp::sign(WHATSAPP_APP_SECRET, body)),
            Auth::Intercom => req.header("x-hub-signature", intercom::sign(INTERCOM_SECRET, body)),
            Auth::Salesiq => req.header("x-siqsignature", salesiq_signer().sign(body)),
        };
    }
    let status = hub.rt.block_on(async { req.send().await.map(|r| r.status().as_u16()) });
    match status {
        Ok(s) => Some(s),
        Err(e) if e.is_builder() => None,
        Err(e) => panic!("{path}: no answer: {e}"),
    }
}

/// The fuzz target: any answer but an unexplained server error.
pub fn request(data: &[u8]) {
    if let Some(status) = send(data) {
        assert!(status < 500 || status == 503, "answered {status} to {data:?}");
    }
}
