//! The webhook desk over real HTTP on loopback: a small axum server records every request and
//! answers with a scripted reply.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Response, Uri};
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use baton_connectors::standard_webhooks::{SigningSecret, WebhookHeaders};
use baton_connectors::WebhookDesk;
use baton_core::agent::Agent;
use baton_core::effect::HandoffRequest;
use baton_core::model::{Channel, CloseReason, ConversationKey, Millis, Role, ServiceStatus, Turn};
use baton_core::ports::{DeliveryError, Desk};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PASSWORD: &str = "s3cret-pw";

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.into(),
        delay: Duration::ZERO,
    }
}

type Script = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

#[derive(Clone)]
struct St {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Script,
}

async fn handle(State(st): State<St>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let path = uri.path().to_string();
    st.seen.lock().unwrap().push(Seen { path: path.clone(), headers, body: body.to_vec() });
    let r = (st.script)(&path);
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    let mut b = Response::builder().status(r.status);
    for (k, v) in &r.headers {
        b = b.header(*k, v);
    }
    b.body(Body::from(r.body)).unwrap()
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn base(&self) -> String {
        format!("http://{}/hub", self.addr)
    }
}

async fn serve(script: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let st = St { seen: seen.clone(), script: Arc::new(script) };
    let app = Router::new().fallback(handle).with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { addr, seen }
}

async fn serve_fixed(r: Reply) -> Server {
    serve(move |_| r.clone()).await
}

/// An address nothing listens on.
async fn refused_base() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hub")
}

fn agent(desk: Value) -> Agent {
    serde_json::from_value(json!({"id": "demo", "desk": desk})).unwrap()
}

fn signed_agent(base: &str) -> Agent {
    agent(json!({
        "kind": "webhook",
        "url": format!("{base}/"),
        "username": "baton",
        "password": PASSWORD,
        "signing_secret": SECRET,
    }))
}

fn plain_agent(base: &str) -> Agent {
    agent(json!({"kind": "webhook", "url": base}))
}

fn key() -> ConversationKey {
    ConversationKey::new("demo", Channel::Telegram, "user-42").unwrap()
}

fn turn(role: Role, text: &str) -> Turn {
    Turn { role, text: text.into(), at: Millis(1) }
}

fn request() -> HandoffRequest {
    HandoffRequest {
        params: [
            ("phone".to_string(), "+385911234567".to_string()),
            ("customer_number".to_string(), "10042".to_string()),
        ]
        .into(),
        handoff_id: "ho_123".into(),
        email: "ann@example.com".into(),
        history: vec![
            turn(Role::User, "hi"),
            turn(Role::Bot, "hello, how can I help?"),
            turn(Role::System, "internal note"),
            turn(Role::Human, "earlier human answer"),
        ],
        question: "I need a person".into(),
        reason: "user asked for a human".into(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn desk() -> WebhookDesk {
    WebhookDesk::new(Duration::from_secs(5))
}

fn ok_reply() -> Reply {
    reply(200, r#"{"code":200,"message":"success"}"#)
}

/// Take the timestamp out of a body after checking it is close to now.
fn strip_timestamp(mut v: Value) -> Value {
    let ts = v["timestamp"].as_i64().expect("timestamp is an integer");
    assert!((now_ms() - ts).abs() < 10_000, "timestamp {ts} is not now in ms");
    v.as_object_mut().unwrap().remove("timestamp");
    v
}

fn assert_signed(seen: &Seen, idempotency_key: &str) {
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("webhook-id"), Some(idempotency_key));
    let expected_auth = format!("Basic {}", B64.encode(format!("baton:{PASSWORD}")));
    assert_eq!(seen.header("authorization"), Some(expected_auth.as_str()));
    let headers = WebhookHeaders::from_header_map(&seen.headers).expect("signature headers present");
    let now = now_ms() / 1000;
    let secret = SigningSecret::parse(SECRET).unwrap();
    assert_eq!(secret.verify(&headers, &seen.body, now), Ok(()));
    // The signature covers the exact bytes: a changed body fails.
    let mut tampered = seen.body.clone();
    tampered.push(b' ');
    assert!(secret.verify(&headers, &tampered, now).is_err());
}

fn assert_no_secrets(message: &str) {
    assert!(!message.contains(PASSWORD), "{message}");
    assert!(!message.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{message}");
    assert!(!message.contains(&B64.encode(format!("baton:{PASSWORD}"))), "{message}");
}

#[tokio::test]
async fn open_posts_the_establish_contract() {
    let server = serve_fixed(ok_reply()).await;
    let a = signed_agent(&server.base());
    let id = desk().open(&a, &key(), &request(), "msg_open_1").await.unwrap();
    assert_eq!(id, "ho_123");

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/hub/conversation/establish");
    assert_signed(&seen[0], "msg_open_1");
    assert_eq!(
        strip_timestamp(seen[0].json()),
        json!({
            "conversation_id": "ho_123",
            "email": "ann@example.com",
            "bot_id": "demo",
            "body": [
                {"message_type": "QUESTION", "text": "hi"},
                {"message_type": "ANSWER", "text": "hello, how can I help?"},
                {"message_type": "ANSWER", "text": "earlier human answer"},
                {"message_type": "QUESTION", "text": "I need a person"},
            ],
            "user_info": {
                "email": "ann@example.com",
                "user_id": "user-42",
                "anonymous_id": null,
                "phone": "+385911234567",
            },
            "reason": "user asked for a human",
            "channel": "telegram",
            "params": {"phone": "+385911234567", "customer_number": "10042"},
        })
    );
}

#[tokio::test]
async fn post_and_close_use_their_paths_and_bodies() {
    let server = serve_fixed(reply(200, r#"{"code":0,"message":"ok"}"#)).await;
    let a = signed_agent(&server.base());
    let d = desk();
    d.post(&a, "ho_123", "still there?", "msg_post_1").await.unwrap();
    d.close(&a, "ho_123", CloseReason::Timeout, "msg_close_1").await.unwrap();
    d.close(&a, "ho_123", CloseReason::UserClosed, "msg_close_2").await.unwrap();

    let seen = server.seen();
    assert_eq!(
        seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
        ["/hub/chat", "/hub/conversation/close", "/hub/conversation/close"]
    );
    assert_signed(&seen[0], "msg_post_1");
    assert_signed(&seen[1], "msg_close_1");
    assert_signed(&seen[2], "msg_close_2");
    assert_eq!(strip_timestamp(seen[0].json()), json!({"conversation_id": "ho_123", "body": "still there?"}));
    assert_eq!(strip_timestamp(seen[1].json()), json!({"conversation_id": "ho_123", "type": "TIMEOUT"}));
    assert_eq!(strip_timestamp(seen[2].json()), json!({"conversation_id": "ho_123", "type": "USER_CLOSED"}));
}

#[tokio::test]
async fn unsigned_desk_still_gets_webhook_id_but_no_auth_or_signature() {
    let server = serve_fixed(reply(200, "")).await;
    let a = plain_agent(&server.base());
    desk().post(&a, "ho_1", "hello", "msg_plain").await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("webhook-id"), Some("msg_plain"));
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[0].header("webhook-signature"), None);
    assert_eq!(seen[0].header("webhook-timestamp"), None);
}

#[tokio::test]
async fn username_without_password_sends_basic_auth() {
    let server = serve_fixed(ok_reply()).await;
    let a = agent(json!({"kind": "webhook", "url": server.base(), "username": "only-user"}));
    desk().post(&a, "ho_1", "hello", "msg_u").await.unwrap();
    let expected = format!("Basic {}", B64.encode("only-user:"));
    assert_eq!(server.seen()[0].header("authorization"), Some(expected.as_str()));
}

async fn post_against(r: Reply) -> Result<(), DeliveryError> {
    let server = serve_fixed(r).await;
    let a = signed_agent(&server.base());
    let result = desk().post(&a, "ho_1", "hello", "msg_s").await;
    assert_eq!(server.seen().len(), 1, "exactly one request, no redirect follow-up");
    result
}

fn message(e: &DeliveryError) -> &str {
    match e {
        DeliveryError::Retryable { message, .. }
        | DeliveryError::Unauthorized { message }
        | DeliveryError::Permanent { message } => message,
    }
}

#[tokio::test]
async fn status_mapping_over_http() {
    assert_eq!(post_against(ok_reply()).await, Ok(()));
    assert_eq!(post_against(reply(200, r#"{"message":"no code"}"#)).await, Ok(()));

    let e = post_against(reply(200, r#"{"code":500,"message":"no agent online"}"#)).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");
    assert!(message(&e).contains("no agent online"), "{e}");
    assert!(message(&e).contains("/hub/chat"), "{e}");
    assert!(message(&e).contains("500"), "{e}");

    for status in [401, 403] {
        let e = post_against(reply(status, r#"{"code":401,"message":"bad credentials"}"#)).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e:?}");
        assert!(message(&e).contains(&status.to_string()), "{e}");
        assert!(message(&e).contains("/hub/chat"), "{e}");
        assert_no_secrets(&e.to_string());
    }

    let mut r = reply(429, "");
    r.headers.push(("retry-after", "7".into()));
    let e = post_against(r).await.unwrap_err();
    let DeliveryError::Retryable { message: m, retry_after_ms } = &e else { panic!("expected Retryable, got {e:?}") };
    assert_eq!(*retry_after_ms, Some(7000));
    assert!(m.starts_with("POST http://127.0.0.1:"), "{m}");
    assert!(m.ends_with("/hub/chat answered HTTP 429"), "{m}");

    let e = post_against(reply(503, "")).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { retry_after_ms: None, .. }), "{e:?}");
    assert!(message(&e).contains("503"));

    let e = post_against(reply(404, "")).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");

    let mut redirect = reply(302, "");
    redirect.headers.push(("location", "http://127.0.0.1:1/elsewhere".into()));
    let e = post_against(redirect).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let a = signed_agent(&refused_base().await);
    let e = desk().open(&a, &key(), &request(), "msg_x").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e:?}");
    assert!(message(&e).contains("/hub/conversation/establish"), "{e}");
    assert_no_secrets(&e.to_string());
}

#[tokio::test]
async fn slow_desk_times_out_as_retryable() {
    let mut r = ok_reply();
    r.delay = Duration::from_secs(3);
    let server = serve_fixed(r).await;
    let a = signed_agent(&server.base());
    let started = std::time::Instant::now();
    let e = WebhookDesk::new(Duration::from_millis(300)).post(&a, "ho_1", "hello", "msg_t").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e:?}");
    assert!(message(&e).contains("300 ms"), "{e}");
}

#[tokio::test]
async fn other_desk_configs_are_permanent_errors() {
    let none = agent(json!({"kind": "none"}));
    let d = desk();
    let e = d.open(&none, &key(), &request(), "m").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");
    assert!(matches!(d.post(&none, "c", "t", "m").await, Err(DeliveryError::Permanent { .. })));
    assert!(matches!(d.close(&none, "c", CloseReason::Timeout, "m").await, Err(DeliveryError::Permanent { .. })));

    let bad_secret = agent(json!({"kind": "webhook", "url": "http://127.0.0.1:9", "signing_secret": "whsec_c2hvcnQ="}));
    let e = d.post(&bad_secret, "c", "t", "m").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");
    assert!(message(&e).contains("signing_secret"), "{e}");
    assert!(!message(&e).contains("c2hvcnQ"), "{e}");

    let bad_url = agent(json!({"kind": "webhook", "url": "ftp://desk"}));
    assert!(matches!(d.post(&bad_url, "c", "t", "m").await, Err(DeliveryError::Permanent { .. })));
}

#[tokio::test]
async fn probe_available_when_all_endpoints_answer() {
    // A desk that answers probes with a non-zero code is still reachable.
    let server = serve_fixed(reply(200, r#"{"code":400,"message":"test ignored"}"#)).await;
    let a = signed_agent(&server.base());
    let (status, detail) = desk().probe(&a).await;
    assert_eq!(status, ServiceStatus::Available, "{detail}");
    let mut seen = server.seen();
    seen.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(
        seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
        ["/hub/chat", "/hub/conversation/close", "/hub/conversation/establish"]
    );
    for s in &seen {
        assert_eq!(s.json()["istest"], json!(true), "{}", s.path);
        assert!(s.json()["conversation_id"].is_string());
        let id = s.header("webhook-id").unwrap().to_string();
        assert_signed(s, &id);
    }
    assert_eq!(seen[1].json()["type"], json!("USER_CLOSED"));
}

#[tokio::test]
async fn probe_reports_rejected_credentials() {
    let server = serve(|path| if path.ends_with("/chat") { reply(401, "") } else { ok_reply() }).await;
    let (status, detail) = desk().probe(&signed_agent(&server.base())).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert!(detail.starts_with("credentials rejected by "), "{detail}");
    assert!(detail.contains("/hub/chat"), "{detail}");
    assert_no_secrets(&detail);
}

#[tokio::test]
async fn probe_reports_server_errors_and_unreachable_desks() {
    let server = serve(|path| if path.ends_with("/close") { reply(503, "") } else { ok_reply() }).await;
    let (status, detail) = desk().probe(&signed_agent(&server.base())).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert!(detail.contains("/hub/conversation/close") && detail.contains("503"), "{detail}");

    let (status, detail) = desk().probe(&signed_agent(&refused_base().await)).await;
    assert_eq!(status, ServiceStatus::Unavailable);
    assert!(detail.contains("connection failed"), "{detail}");
    assert_no_secrets(&detail);

    let (status, _) = desk().probe(&agent(json!({"kind": "none"}))).await;
    assert_eq!(status, ServiceStatus::NotConfigured);
}

/// A client for public targets only refuses a name that resolves to loopback, for good
/// (retrying cannot make it public), and the desk hears nothing; the same call with a
/// client for any target goes through.
#[tokio::test]
async fn a_client_for_public_targets_refuses_names_of_private_addresses() {
    use baton_connectors::outbound::{http_client, Targets};
    let server = serve_fixed(ok_reply()).await;
    let by_name = server.base().replace("127.0.0.1", "localhost");
    let a = signed_agent(&by_name);
    let timeout = Duration::from_secs(5);
    let public_only = WebhookDesk::from_client(http_client(timeout, Targets::PublicOnly), timeout);
    let e = public_only.post(&a, "ho_1", "hello", "msg_p").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e:?}");
    assert!(message(&e).contains("localhost resolves only to loopback, private or link-local addresses"), "{e}");
    assert!(server.seen().is_empty(), "nothing reached the server");

    let any = WebhookDesk::from_client(http_client(timeout, Targets::Any), timeout);
    any.post(&a, "ho_1", "hello", "msg_a").await.unwrap();
    assert_eq!(server.seen().len(), 1);
}
