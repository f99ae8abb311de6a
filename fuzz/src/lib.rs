//! Fuzz targets: every inbound parser and verifier of the hub, and its whole HTTP surface.
//!
//! Each target takes arbitrary bytes and must neither panic nor hang nor grow without bound;
//! where a verifier is involved it also checks properties that must hold for any input (a
//! signature made with the right key verifies, one made otherwise does not). The same
//! functions run three ways:
//! - as tests (`cargo test -p baton-fuzz`): the seed corpus in `fuzz/corpus/`, the inputs
//!   fuzzing found in `fuzz/regressions/`, and deterministic mutations of the seeds;
//! - under libFuzzer (`scripts/fuzz.sh`, through the `fuzz/libfuzzer` package);
//! - by hand: `target()` looks a target up by name.
//!
//! Inputs of the verifier targets are `header '\n' body`: the first line is the header the
//! verifier reads, the rest is the body; without a newline there is no header.

pub mod http;

use baton_connectors::standard_webhooks::{SigningSecret, WebhookHeaders};
use baton_connectors::{agent_api, hosted_agent, intercom, line, livechat, salesiq, telegram, webhook_desk, whatsapp};
use baton_core::agent::Agent;
use baton_tests::salesiq::WebhookSigner;
use std::sync::OnceLock;

/// The Standard Webhooks secret of the fuzz agent's desk and Agent API.
pub const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const TELEGRAM_SECRET: &str = "fuzz-telegram-secret";
pub const LINE_SECRET: &str = "fuzz-line-channel-secret";
pub const WHATSAPP_APP_SECRET: &str = "fuzz-whatsapp-app-secret";
pub const WHATSAPP_VERIFY_TOKEN: &str = "fuzz-verify-token";
pub const WHATSAPP_PHONE_ID: &str = "106540352242922";
pub const INTERCOM_SECRET: &str = "fuzz-intercom-client-secret";
pub const LIVECHAT_SECRET: &str = "fuzz-livechat-webhook-secret";
/// Verification time of the Standard Webhooks target (seconds); seeds are signed for it.
pub const NOW_SECS: i64 = 1_700_000_000;
/// Every outbound call of the fuzz agent goes here: the discard port, refused at once.
const NOWHERE: &str = "http://127.0.0.1:9";

/// A fuzz target: bytes in, panics are the failures.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz/corpus/*` and of the libFuzzer binaries).
pub const TARGETS: &[(&str, Target)] = &[
    ("telegram", telegram),
    ("line", line),
    ("whatsapp", whatsapp),
    ("salesiq", salesiq),
    ("intercom", intercom),
    ("livechat", livechat),
    ("webhook_desk", webhook_desk),
    ("agent_api", agent_api),
    ("hosted_agent", hosted_agent),
    ("config", config),
    ("http", http::request),
];

pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// `header '\n' body`; no newline: no header, all body. A header that is not UTF-8 is
/// passed as absent, as an HTTP stack would refuse it.
pub fn split(data: &[u8]) -> (Option<&str>, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    }
}

/// Signs like SalesIQ with the key pair of the fuzz agent, made once per process.
pub fn salesiq_signer() -> &'static WebhookSigner {
    static SIGNER: OnceLock<WebhookSigner> = OnceLock::new();
    SIGNER.get_or_init(WebhookSigner::new)
}

/// The agents file of the fuzz agent `fz`: every channel and desk configured, every
/// outbound address unreachable.
pub fn agents_toml() -> String {
    let pem = salesiq_signer().public_key_pem().replace('\n', "\\n");
    format!(
        r#"[[agent]]
id = "fz"
name = "Fuzz"
[agent.brain]
kind = "faq"
faq = [{{ question = "What are your opening hours?", answer = "9 to 5." }}]
[agent.desk]
kind = "webhook"
url = "{NOWHERE}/desk"
signing_secret = "{SIGNING_SECRET}"
[agent.policy]
require_email = false
[agent.api]
converse_url = "{NOWHERE}/converse"
signing_secret = "{SIGNING_SECRET}"
[agent.channels.telegram]
bot_token = "4242:fuzz-bot-token"
secret_token = "{TELEGRAM_SECRET}"
api_base = "{NOWHERE}"
[agent.channels.line]
channel_secret = "{LINE_SECRET}"
access_token = "fuzz-line-token"
api_base = "{NOWHERE}"
[agent.channels.whatsapp]
phone_number_id = "{WHATSAPP_PHONE_ID}"
access_token = "fuzz-wa-token"
app_secret = "{WHATSAPP_APP_SECRET}"
verify_token = "{WHATSAPP_VERIFY_TOKEN}"
api_base = "{NOWHERE}"
[agent.salesiq]
server = "{NOWHERE}"
accounts_server = "{NOWHERE}"
screen_name = "fuzz"
app_id = "1"
client_id = "1000.FUZZ"
client_secret = "fuzz-zoho-secret"
refresh_token = "fuzz-zoho-refresh"
webhook_public_keys = ["{pem}"]
[agent.intercom]
api_base = "{NOWHERE}"
access_token = "fuzz-intercom-token"
client_secret = "{INTERCOM_SECRET}"
bot_admin_id = "814860"
[agent.livechat]
api_base = "{NOWHERE}"
accounts_base = "{NOWHERE}"
organization_id = "390e44e6-f1e6-0368c-z6ddb-74g14508c2ex"
client_id = "9cbf3a968289727cb3cdfe83ab1d9836"
client_secret = "fuzz-livechat-client-secret"
refresh_token = "fuzz-livechat-refresh"
webhook_secret = "{LIVECHAT_SECRET}"
"#
    )
}

/// The fuzz agent, parsed once.
pub fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let mut agents = baton::config::parse("fuzz.toml", &agents_toml(), &|_| None).expect("the fuzz agent is valid");
        agents.pop().expect("one agent")
    })
}

/// Telegram: the update parser and the secret-token check (only the exact secret passes).
pub fn telegram(data: &[u8]) {
    let (header, body) = split(data);
    let _ = telegram::parse_update(body);
    let cfg = agent().channels.telegram.as_ref().expect("telegram configured");
    assert_eq!(telegram::verify_secret(cfg, header), header == Some(TELEGRAM_SECRET));
    assert!(telegram::verify_secret(cfg, Some(TELEGRAM_SECRET)));
}

/// LINE: the webhook parser and `x-line-signature` (Base64 HMAC-SHA256 of the body).
pub fn line(data: &[u8]) {
    let (header, body) = split(data);
    let _ = line::parse_webhook(body);
    let right = baton_tests::line::sign(LINE_SECRET, body);
    let verified = line::verify_signature(LINE_SECRET, body, header);
    if verified {
        // Base64 decoding is strict (no trailing bits): only the right MAC's text passes.
        assert_eq!(header.map(str::trim), Some(right.as_str()), "a wrong LINE signature verified");
    }
    assert!(line::verify_signature(LINE_SECRET, body, Some(&right)));
    assert!(!line::verify_signature("another-secret", body, Some(&right)));
}

/// WhatsApp: the webhook parser, `X-Hub-Signature-256` and the subscription handshake
/// (its query is the header line, `mode&token&challenge`).
pub fn whatsapp(data: &[u8]) {
    let (header, body) = split(data);
    let _ = whatsapp::parse_webhook(body, WHATSAPP_PHONE_ID);
    let right = baton_tests::whatsapp::sign(WHATSAPP_APP_SECRET, body);
    if whatsapp::verify_signature(WHATSAPP_APP_SECRET, body, header) {
        let given = header.unwrap_or_default().trim();
        assert!(given.eq_ignore_ascii_case(&right), "a wrong WhatsApp signature verified");
    }
    assert!(whatsapp::verify_signature(WHATSAPP_APP_SECRET, body, Some(&right)));
    let cfg = agent().channels.whatsapp.as_ref().expect("whatsapp configured");
    let mut parts = header.unwrap_or_default().splitn(3, '&');
    let (mode, token, challenge) = (parts.next(), parts.next(), parts.next());
    if let Some(echo) = whatsapp::verify_subscription(cfg, mode, token, challenge) {
        assert_eq!(token, Some(WHATSAPP_VERIFY_TOKEN));
        assert_eq!(Some(echo.as_str()), challenge);
    }
}

/// Zoho SalesIQ: the webhook parser and `x-siqsignature` (RSA over the body): no input
/// forges a signature, and the right one verifies.
pub fn salesiq(data: &[u8]) {
    let (header, body) = split(data);
    let _ = salesiq::parse(body);
    let keys = &agent().salesiq.as_ref().expect("salesiq configured").webhook_public_keys;
    assert!(salesiq::verify(keys, body, header).is_err(), "a forged SalesIQ signature verified");
    let _ = salesiq::verify(&[String::from_utf8_lossy(body).into_owned()], b"body", header);
}

/// Intercom: the notification parser, HTML to text, and `X-Hub-Signature` (HMAC-SHA1).
pub fn intercom(data: &[u8]) {
    let (header, body) = split(data);
    if let Ok(n) = intercom::parse(body) {
        let _ = n.event.conversation_id();
    }
    let _ = intercom::html_to_text(&String::from_utf8_lossy(body));
    let right = baton_tests::intercom::sign(INTERCOM_SECRET, body);
    if intercom::verify_signature(INTERCOM_SECRET, body, header) {
        let given = header.unwrap_or_default().trim();
        assert!(given.eq_ignore_ascii_case(&right), "a wrong Intercom signature verified");
    }
    assert!(intercom::verify_signature(INTERCOM_SECRET, body, Some(&right)));
}

/// LiveChat: the webhook parser and its `secret_key` check (only the exact secret passes).
pub fn livechat(data: &[u8]) {
    let (header, body) = split(data);
    if let Ok(n) = livechat::webhook::parse(body) {
        let _ = n.event.chat_id();
    }
    let cfg = agent().livechat.as_ref().expect("livechat configured");
    assert_eq!(livechat::webhook::verify_secret(cfg, header), header == Some(LIVECHAT_SECRET));
}

/// The webhook desk: human message and close bodies, and Standard Webhooks signatures
/// (header line: `id timestamp signature...`, verified at [`NOW_SECS`]).
pub fn webhook_desk(data: &[u8]) {
    let (header, body) = split(data);
    if let Ok(webhook_desk::Inbound::Real(m)) = webhook_desk::parse_human_message(body) {
        let _ = webhook_desk::dedupe_id(header, &m);
    }
    let _ = webhook_desk::parse_human_close(body);
    let secret = SigningSecret::parse(SIGNING_SECRET).expect("a valid secret");
    let mut parts = header.unwrap_or_default().splitn(3, ' ');
    let headers = WebhookHeaders {
        id: parts.next().unwrap_or_default(),
        timestamp: parts.next().unwrap_or_default(),
        signature: parts.next().unwrap_or_default(),
    };
    if secret.verify(&headers, body, NOW_SECS).is_ok() {
        let ts: i64 = headers.timestamp.trim().parse().expect("a verified timestamp is a number");
        assert!((ts - NOW_SECS).abs() <= 300, "a timestamp outside the window verified");
    }
    // Any id and body: the right signature verifies, and not five minutes and a second later.
    let id = headers.id;
    let signed = WebhookHeaders { id, timestamp: &NOW_SECS.to_string(), signature: &secret.sign(id, NOW_SECS, body) };
    assert_eq!(secret.verify(&signed, body, NOW_SECS).is_ok(), !id.is_empty());
    assert!(secret.verify(&signed, body, NOW_SECS + 301).is_err());
}

/// The Agent API's `POST /converse/chat` body.
pub fn agent_api(data: &[u8]) {
    let _ = agent_api::parse_converse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = agent_api::valid_param_key(s);
    }
}

/// A hosted AI agent's converse webhook and action trigger bodies.
pub fn hosted_agent(data: &[u8]) {
    let _ = hosted_agent::parse_converse_webhook(data);
    let _ = hosted_agent::parse_action_trigger(data);
}

/// The agents file (`baton agents apply`, `baton serve --agents`); `env:` references
/// resolve to a fixed value.
pub fn config(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let _ = baton::config::parse("agents.toml", src, &|name| (name.len() < 64).then(|| SIGNING_SECRET.to_string()));
}
