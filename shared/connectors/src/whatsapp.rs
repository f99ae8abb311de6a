//! WhatsApp Cloud API (Meta Graph): the webhook's subscription handshake and signature, parsing
//! of `messages` webhooks (inbound messages of every type and delivery statuses), and sending
//! a message: text, interactive reply buttons, or the configured template once the 24-hour
//! customer-service window has closed.
//!
//! Secrets: the app secret is only the HMAC key, the verify token is only compared, and the
//! access token only goes into the `Authorization` header. URLs hold no secret, transport
//! errors are formatted `without_url`, and every error message is scrubbed of the access token
//! as a last guard.
//!
//! Wire facts checked before writing this (PROTOCOLS.md §8, §10 and):
//! - [C] handshake and signature, from Meta's "Create a webhook endpoint" page
//!   (developers.facebook.com/docs/whatsapp/create-webhook-endpoint, copy in
//!   ArielAmzalak/WBAPI_Doc `doc/create-webhook-endpoint.md`): `GET <callback>?hub.mode=subscribe
//!   &hub.challenge=<random>&hub.verify_token=<ours>`; valid → 200 with the `hub.challenge` value,
//!   otherwise any 4xx. POSTs carry `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret,
//!   payload)>`. POSTs are batched (up to 1000 updates, not guaranteed); a failed POST is retried
//!   "immediately, then ... with decreasing frequency over the next 36 hours", then dropped, so
//!   dedupe on the wamid. (This page says 36 hours; PROTOCOLS.md §8 recorded a 24 h / 7 days
//!   conflict from third parties.)
//! - [C] webhook payloads, from Meta's `messages` webhook references (same copy: `doc/status.md`,
//!   `doc/audio.md`, `doc/unsupported.md`, `doc/errors.md`) and the payload examples
//!   (We-are-Sybil/m `whatsapp_api_knowledge_base/webhook_notification_payloads_example.md`,
//!   `message_interactive_reply_buttons_messages.md`): `{object:"whatsapp_business_account",
//!   entry:[{id, changes:[{field:"messages", value:{messaging_product, metadata:{display_phone_number,
//!   phone_number_id}, contacts?:[{profile:{name}, wa_id}], messages?:[…], statuses?:[…],
//!   errors?:[…]}}]}]}`. A message has `from`, `id` (wamid), `timestamp` (unix seconds, a string)
//!   and `type`: `text{body}`; `interactive{type:"button_reply"|"list_reply", button_reply|list_reply:
//!   {id, title, description?}}`; `button{text, payload}` (a template's quick-reply button);
//!   `image|video|document|sticker{id, mime_type, sha256, caption?, filename? (document)}`;
//!   `audio{id, mime_type, voice: bool}` (`voice: true` for a voice note); `location{latitude,
//!   longitude, name?, address?}`; `contacts`, `reaction{message_id, emoji}`, `system`, `order`;
//!   and `unsupported{type}` with `errors:[{code:131051, title:"Message type unknown"}]` (older
//!   versions: `type:"unknown"`). A status has `id`, `status` (`sent|delivered|read|played|failed`),
//!   `timestamp`, `recipient_id` and, when failed, `errors:[{code, title, message, error_data:
//!   {details}, href}]`. "A WhatsApp user's ID and phone number may not always match" (audio ref).
//! - [C] sending, from Meta's "Interactive reply buttons messages" page (same copy) and the text
//!   reference: `POST {base}/{version}/{phone-number-id}/messages` with `Authorization: Bearer`;
//!   `{messaging_product:"whatsapp", recipient_type:"individual", to, type:"text", text:{body,
//!   preview_url}}` (body ≤ 4096, whatsapp-api-js `Text`); `type:"interactive", interactive:{type:
//!   "button", body:{text ≤ 1024}, action:{buttons:[{type:"reply", reply:{id ≤ 256, title ≤ 20,
//!   unique}}] (at most 3)}}`; answer `{messaging_product, contacts:[{input, wa_id}], messages:[{id}]}`.
//! - [C] templates: `type:"template", template:{name, language:{code}, components:[{type:"body",
//!   parameters:[{type:"text", text}]}]}` (WhatsApp Node.js SDK `TemplateObject`,
//!   whatsapp.github.io/WhatsApp-Nodejs-SDK). [S] a body text parameter may hold 32768 characters
//!   when the body is the template's only component, else 1024 (whatsapp-api-js `BodyParameter`
//!   docs); Meta refuses a parameter with a newline, a tab or more than 4 consecutive spaces
//!   ("Param text cannot have new-line/tab characters or more than 4 consecutive spaces":
//!   netflie/whatsapp-cloud-api#201, dimagi/open-chat-studio#4277), so whitespace runs are
//!   collapsed to one space and the text is cut to 1024 characters.
//! - [C] Graph errors are `{error:{message:"(#<code>) <title>", type, code, error_data:{
//!   messaging_product, details}, fbtrace_id}}`; Meta says to branch on `code` (and `details`),
//!   not on titles or HTTP statuses (Cloud API error-codes page, as copied by verloop.io and
//!   aivo.co). [S] codes: 131047 "Re-engagement message" (more than 24 hours since the user last
//!   wrote; send a template), 131026 "Message undeliverable", 130429 "Rate limit hit"
//!   (throughput), 131056 "(Business Account, Consumer Account) pair rate limit hit" (wait and
//!   retry for the same user; the Cloud API overview, as quoted by third parties, allows about
//!   1 message every 6 seconds per user: learn.turn.io), 131048 spam rate limit (quality; waiting
//!   minutes does not help), 4 and 80007 (app / account rate limits), 2 and 133004 (service
//!   temporarily unavailable), 190 "Access token has expired" (HTTP 401), 0 AuthException, 10 and
//!   200-299 permission errors (HTTP 403).
//!
//! - [C] media, from Meta's "Media" page (developers.facebook.com/documentation/business-messaging/
//!   whatsapp/business-phone-numbers/media): `GET /{media-id}` answers the download URL, which is
//!   fetched with the same Bearer token; "Media IDs in webhooks expire after 7 days". [S] the URL
//!   expires after 5 minutes (docs.kapso.ai, a Meta proxy's reference).
//!
//! Not confirmed [U]:
//! - whether a free-form send outside the window fails synchronously (HTTP 400 with 131047, as
//!   dualhook.com and the "Triggering code" of metabusinessmcp.com show) or is accepted and
//!   then reported as a `failed` status with 131047 (fabrahaingo/joel#314 observed this). Both
//!   are handled: the send maps 131047 to Permanent, and [`parse_webhook`] reports the failed
//!   status with its error so the runtime can tell the desk.
//! - the HTTP status Meta pairs with 130429 / 131056 / 4 (third parties say 400 or 429), and
//!   whether it ever sends `Retry-After`; errors are classified by `code` first, and
//!   `Retry-After` is honoured when present (131056 without it waits 6 s).
//! - whether Meta counts the 4096 / 1024 / 20 character limits in characters or UTF-16 units;
//!   characters are counted here (the core splits text by UTF-16 units, which is stricter).
//! - the response deadline for webhooks (third parties say a few seconds).
//! - Meta notes a user's wa_id and phone number "may not always match"; `from` is used as the
//!   address to answer (Meta's examples send it back as `to`), and the profile name is taken
//!   from the contact whose `wa_id` has the same digits (or the only contact listed).
//! - the template parameter limit when the template has only a body (32768 per [S]); 1024 is
//!   used because the template's other components are unknown here.
//! - the Cloud API takes no idempotency key, so a retried send whose first answer was lost, or
//!   a retried long text-then-buttons pair whose second call failed, can deliver text twice.

use crate::media::{download, valid_media_id, Fetched, MAX_MEDIA_BYTES};
use crate::outbound::{quote, read_limited, retry_after_ms, transport_error, MAX_RESPONSE_BYTES};
use baton_core::agent::{WhatsappConfig, WhatsappTemplate};
use baton_core::model::{Button, OutMessage};
use baton_core::ports::DeliveryError;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use std::collections::HashSet;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The webhook header carrying `sha256=<hex HMAC-SHA256(app secret, raw body)>`.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// Longest text message body, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest body text of an interactive message, in characters.
pub const MAX_INTERACTIVE_BODY_CHARS: usize = 1024;
/// Reply buttons one interactive message can carry.
pub const MAX_REPLY_BUTTONS: usize = 3;
/// Longest reply button id, in characters.
pub const MAX_BUTTON_ID_CHARS: usize = 256;
/// Reply button titles are cut to this many characters.
pub const MAX_BUTTON_TITLE_CHARS: usize = 20;
/// The window template's text parameter is cut to this many characters.
pub const MAX_TEMPLATE_PARAMETER_CHARS: usize = 1024;
/// Longest webhook body accepted (Meta batches up to 1000 updates in one POST).
pub const MAX_WEBHOOK_BYTES: usize = 4 * 1024 * 1024;
/// Longest `hub.challenge` echoed back.
pub const MAX_CHALLENGE_BYTES: usize = 1024;

/// Outside the 24-hour customer-service window: only a template can reach the user.
pub const ERROR_REENGAGEMENT: i64 = 131047;
/// Cloud API throughput reached.
pub const ERROR_RATE_LIMIT: i64 = 130429;
/// Too many messages to the same user in a short time.
pub const ERROR_PAIR_RATE_LIMIT: i64 = 131056;
/// The access token expired or is invalid.
pub const ERROR_ACCESS_TOKEN: i64 = 190;
/// How long to wait after a pair rate limit when Meta gives no `Retry-After` (about one
/// message every 6 seconds to the same user).
pub const PAIR_RATE_LIMIT_RETRY_MS: u64 = 6_000;

/// Codes worth retrying whatever the HTTP status: rate limits (app, account, throughput, pair)
/// and "service temporarily unavailable".
const RETRYABLE_CODES: &[i64] = &[2, 4, 80007, ERROR_RATE_LIMIT, ERROR_PAIR_RATE_LIMIT, 133004];

type HmacSha256 = Hmac<Sha256>;

/// `"sha256=<hex>"` HMAC-SHA256(app_secret, raw body), compared in constant time. An empty app
/// secret accepts nothing.
pub fn verify_signature(app_secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(header) = header else {
        return false;
    };
    if app_secret.is_empty() {
        return false;
    }
    let Some(digest) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let mut given = [0u8; 32];
    if digest.len() != 64 || hex::decode_to_slice(digest, &mut given).is_err() {
        return false;
    }
    let Ok(mut mac) = HmacSha256::new_from_slice(app_secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The subscription handshake: `Some(challenge)` when `hub.mode == "subscribe"` and
/// `hub.verify_token` matches `config.verify_token` (constant time); `None` otherwise. An empty
/// configured token matches nothing, and a challenge that is empty, longer than
/// [`MAX_CHALLENGE_BYTES`] or holds control characters is not echoed.
pub fn verify_subscription(
    config: &WhatsappConfig,
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&str>,
) -> Option<String> {
    if mode != Some("subscribe") {
        return None;
    }
    let expected = config.verify_token.expose().as_bytes();
    let given = token?.as_bytes();
    if expected.is_empty() || !bool::from(given.ct_eq(expected)) {
        return None;
    }
    let challenge = challenge?;
    if challenge.is_empty() || challenge.len() > MAX_CHALLENGE_BYTES || challenge.chars().any(char::is_control) {
        return None;
    }
    Some(challenge.to_string())
}

/// One message from a user.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The wamid: unique per message and kept on redelivery, so the dedupe key.
    pub message_id: String,
    /// The sender (`from`, their wa_id): where answers go.
    pub from: String,
    /// The sender's WhatsApp profile name, when Meta sends it.
    pub name: Option<String>,
    /// ms since epoch (Meta sends seconds).
    pub timestamp: i64,
    pub kind: InboundKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboundKind {
    Text(String),
    /// A pressed button: interactive `button_reply.id`, `list_reply.id`, or a template's
    /// quick-reply `payload`.
    Button(String),
    /// An attachment, by its media id (to be fetched from the Graph API with the access token;
    /// it is not a URL). `kind` is `image`, `audio`, `voice`, `video`, `document` or `sticker`.
    Media {
        kind: String,
        id: String,
        caption: Option<String>,
        filename: Option<String>,
    },
    Location {
        latitude: f64,
        longitude: f64,
        name: Option<String>,
        address: Option<String>,
    },
    /// A message we cannot relay, named by its type (`contacts`, `reaction`, `order`, `system`,
    /// `nfm_reply`, ...; for Meta's `unsupported` type, the unsupported type such as `edit`).
    Unsupported(String),
}

/// A delivery status of a message we sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The wamid of our message.
    pub message_id: String,
    pub recipient: String,
    /// `sent`, `delivered`, `read`, `played` or `failed`.
    pub status: String,
    /// For a failed delivery: code and title (and details), e.g.
    /// `131047 Re-engagement message (More than 24 hours have passed ...)`.
    pub error: Option<String>,
}

/// What one webhook call carries for our phone number.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Webhook {
    pub messages: Vec<Inbound>,
    pub statuses: Vec<Status>,
}

/// Why a webhook body is rejected; `Field` names the field
/// (`entry[0].changes[0].value.messages[1].from: missing`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("webhook body is larger than {MAX_WEBHOOK_BYTES} bytes")]
    TooLarge,
    #[error("webhook body is not JSON: {0}")]
    NotJson(String),
    #[error("webhook body must be a JSON object")]
    NotObject,
    #[error("{field}: {message}")]
    Field { field: String, message: String },
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> ParseError {
    ParseError::Field { field: field.into(), message: message.into() }
}

/// An object and where it is, so errors name the field (`entry[0].changes[1].value.metadata`).
struct Fields<'a> {
    at: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(at: String, value: &'a Value) -> Result<Self, ParseError> {
        match value {
            Value::Object(map) => Ok(Fields { at, map }),
            _ => Err(field_error(at, "must be an object")),
        }
    }

    fn name(&self, path: &str) -> String {
        if self.at.is_empty() {
            path.to_string()
        } else {
            format!("{}.{path}", self.at)
        }
    }

    /// The value at a dotted `path`; `None` when any part is absent or null.
    fn get(&self, path: &str) -> Option<&'a Value> {
        let mut parts = path.split('.');
        let mut value = self.map.get(parts.next()?)?;
        for part in parts {
            value = value.get(part)?;
        }
        Some(value).filter(|v| !v.is_null())
    }

    fn string(&self, path: &str) -> Result<&'a str, ParseError> {
        match self.get(path) {
            None => Err(field_error(self.name(path), "missing")),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(field_error(self.name(path), "must be a string")),
        }
    }

    fn non_empty(&self, path: &str) -> Result<&'a str, ParseError> {
        match self.string(path)? {
            s if s.trim().is_empty() => Err(field_error(self.name(path), "must not be empty")),
            s => Ok(s),
        }
    }

    /// A descriptive string (caption, name, ...): absent, empty or not a string is `None`, so
    /// an odd optional field never costs a user's message.
    fn text(&self, path: &str) -> Option<String> {
        self.get(path).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
    }

    fn array(&self, path: &str) -> Result<Option<&'a Vec<Value>>, ParseError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(field_error(self.name(path), "must be an array")),
        }
    }

    fn number(&self, path: &str, range: std::ops::RangeInclusive<f64>) -> Result<f64, ParseError> {
        match self.get(path) {
            None => Err(field_error(self.name(path), "missing")),
            Some(v) => v.as_f64().filter(|n| range.contains(n)).ok_or_else(|| {
                field_error(self.name(path), format!("must be a number from {} to {}", range.start(), range.end()))
            }),
        }
    }

    /// Unix seconds (Meta sends a string of digits) as ms.
    fn timestamp_ms(&self, path: &str) -> Result<i64, ParseError> {
        let secs = match self.get(path) {
            None => return Err(field_error(self.name(path), "missing")),
            Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
            Some(v) => v.as_i64(),
        };
        secs.map(|s| s.saturating_mul(1000)).ok_or_else(|| field_error(self.name(path), "must be unix seconds"))
    }
}

/// Every message and status of one webhook call addressed to `phone_number_id` (changes for
/// other phone numbers, changes of other fields and bodies of other objects are skipped).
/// Missing or malformed required fields -> ParseError naming the field.
pub fn parse_webhook(body: &[u8], phone_number_id: &str) -> Result<Webhook, ParseError> {
    if body.len() > MAX_WEBHOOK_BYTES {
        return Err(ParseError::TooLarge);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ParseError::NotObject);
    }
    let root = Fields::new(String::new(), &value)?;
    if root.string("object")? != "whatsapp_business_account" {
        return Ok(Webhook::default());
    }
    let mut out = Webhook::default();
    let Some(entries) = root.array("entry")? else {
        return Err(field_error("entry", "missing"));
    };
    for (i, entry) in entries.iter().enumerate() {
        let entry = Fields::new(format!("entry[{i}]"), entry)?;
        let Some(changes) = entry.array("changes")? else {
            return Err(field_error(entry.name("changes"), "missing"));
        };
        for (j, change) in changes.iter().enumerate() {
            let change = Fields::new(entry.name(&format!("changes[{j}]")), change)?;
            if change.string("field")? != "messages" {
                continue;
            }
            let value = Fields::new(change.name("value"), change.get("value").unwrap_or(&Value::Null))?;
            if value.non_empty("metadata.phone_number_id")? != phone_number_id {
                continue;
            }
            parse_value(&value, &mut out)?;
        }
    }
    Ok(out)
}

fn parse_value(value: &Fields<'_>, out: &mut Webhook) -> Result<(), ParseError> {
    let contacts = value.array("contacts")?;
    for (k, message) in value.array("messages")?.into_iter().flatten().enumerate() {
        let message = Fields::new(value.name(&format!("messages[{k}]")), message)?;
        out.messages.push(parse_message(&message, contacts)?);
    }
    for (k, status) in value.array("statuses")?.into_iter().flatten().enumerate() {
        let status = Fields::new(value.name(&format!("statuses[{k}]")), status)?;
        out.statuses.push(parse_status(&status)?);
    }
    if let Some(errors) = value.array("errors")? {
        // Account- or system-level problems (e.g. a rate limit) reported without a message.
        for error in errors {
            tracing::warn!(error = %error_summary(error), "WhatsApp reported an error in a webhook");
        }
    }
    Ok(())
}

const MEDIA_TYPES: &[&str] = &["image", "audio", "voice", "video", "document", "sticker"];

fn parse_message(m: &Fields<'_>, contacts: Option<&Vec<Value>>) -> Result<Inbound, ParseError> {
    let message_id = m.non_empty("id")?.to_string();
    let from = m.non_empty("from")?.to_string();
    let timestamp = m.timestamp_ms("timestamp")?;
    let kind = match m.non_empty("type")? {
        "text" => InboundKind::Text(m.string("text.body")?.to_string()),
        "interactive" => match m.non_empty("interactive.type")? {
            "button_reply" => InboundKind::Button(m.non_empty("interactive.button_reply.id")?.to_string()),
            "list_reply" => InboundKind::Button(m.non_empty("interactive.list_reply.id")?.to_string()),
            other => InboundKind::Unsupported(other.to_string()),
        },
        // A template's quick-reply button: the payload set when sending, else its text.
        "button" => match m.text("button.payload").or_else(|| m.text("button.text")) {
            Some(payload) => InboundKind::Button(payload),
            None => return Err(field_error(m.name("button.payload"), "missing")),
        },
        kind if MEDIA_TYPES.contains(&kind) => {
            let is_voice = kind == "voice" || (kind == "audio" && m.get("audio.voice") == Some(&Value::Bool(true)));
            InboundKind::Media {
                kind: if is_voice { "voice" } else { kind }.to_string(),
                id: m.non_empty(&format!("{kind}.id"))?.to_string(),
                caption: m.text(&format!("{kind}.caption")),
                filename: m.text(&format!("{kind}.filename")),
            }
        }
        "location" => InboundKind::Location {
            latitude: m.number("location.latitude", -90.0..=90.0)?,
            longitude: m.number("location.longitude", -180.0..=180.0)?,
            name: m.text("location.name"),
            address: m.text("location.address"),
        },
        "unsupported" => InboundKind::Unsupported(m.text("unsupported.type").unwrap_or_else(|| "unsupported".into())),
        other => InboundKind::Unsupported(other.to_string()),
    };
    let name = profile_name(contacts, &from);
    Ok(Inbound { message_id, from, name, timestamp, kind })
}

/// The profile name of the contact whose wa_id is `from` (ignoring `+` and formatting), or of
/// the only contact listed.
fn profile_name(contacts: Option<&Vec<Value>>, from: &str) -> Option<String> {
    let contacts = contacts?;
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let from_digits = digits(from);
    let same = |c: &&Value| {
        c.get("wa_id")
            .and_then(Value::as_str)
            .is_some_and(|w| w == from || (!from_digits.is_empty() && digits(w) == from_digits))
    };
    let contact = contacts.iter().find(same).or(if contacts.len() == 1 { contacts.first() } else { None })?;
    let name = contact.get("profile")?.get("name")?.as_str()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn parse_status(s: &Fields<'_>) -> Result<Status, ParseError> {
    let message_id = s.non_empty("id")?.to_string();
    let recipient = s.non_empty("recipient_id")?.to_string();
    let status = s.non_empty("status")?.to_string();
    let error = s.array("errors")?.and_then(|errors| errors.first()).map(error_summary);
    Ok(Status { message_id, recipient, status, error })
}

/// `131047 Re-engagement message (details)` from an `errors[]` item, bounded.
fn error_summary(error: &Value) -> String {
    let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let mut out = error.get("code").and_then(Value::as_i64).map(|c| c.to_string()).unwrap_or_default();
    if let Some(title) = text("title").or_else(|| text("message")) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(title);
    }
    let details = error.get("error_data").and_then(|d| d.get("details")).and_then(Value::as_str).map(str::trim);
    if let Some(details) = details.filter(|d| !d.is_empty()) {
        out = if out.is_empty() { details.to_string() } else { format!("{out} ({details})") };
    }
    if out.is_empty() {
        "unknown error".into()
    } else {
        quote(&out)
    }
}

/// A placeholder text for non-text inbound messages, so a human sees what arrived:
/// `[image (media id 123): caption]`, `[document "report.pdf" (media id 9)]`,
/// `[location: 45.81, 15.98 Zagreb, Trg bana Jelačića 1]`, `[unsupported message: reaction]`.
/// Media ids are not URLs: the file stays with Meta until fetched with the access token.
pub fn describe(kind: &InboundKind) -> String {
    match kind {
        InboundKind::Text(text) => text.clone(),
        InboundKind::Button(value) => format!("[button: {value}]"),
        InboundKind::Media { kind, id, caption, filename } => {
            let mut out = format!("[{kind}");
            if let Some(filename) = filename {
                out.push_str(&format!(" \"{filename}\""));
            }
            out.push_str(&format!(" (media id {id})"));
            if let Some(caption) = caption {
                out.push_str(&format!(": {caption}"));
            }
            out.push(']');
            out
        }
        InboundKind::Location { latitude, longitude, name, address } => {
            let place: Vec<&str> = [name, address].into_iter().flatten().map(String::as_str).collect();
            if place.is_empty() {
                format!("[location: {latitude}, {longitude}]")
            } else {
                format!("[location: {latitude}, {longitude} {}]", place.join(", "))
            }
        }
        InboundKind::Unsupported(kind) => format!("[unsupported message: {kind}]"),
    }
}

/// `text` cut to `max` characters, the last one an ellipsis when something was cut.
fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn text_body(to: &str, text: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": { "preview_url": false, "body": text },
    })
}

fn buttons_body(to: &str, text: &str, buttons: Vec<Value>) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": { "text": text },
            "action": { "buttons": buttons },
        },
    })
}

fn label(button: &Button) -> &str {
    if button.label.trim().is_empty() {
        &button.value
    } else {
        button.label.trim()
    }
}

/// The reply buttons: id = the button's value (1-256 characters, unique), title = its label cut
/// to 20 characters (made unique with the button's number when two cut labels collide).
fn reply_buttons(buttons: &[Button]) -> Result<Vec<Value>, DeliveryError> {
    let mut ids = HashSet::new();
    let mut titles: Vec<String> = Vec::with_capacity(buttons.len());
    for (i, button) in buttons.iter().enumerate() {
        let id_chars = button.value.chars().count();
        if button.value.trim().is_empty() || id_chars > MAX_BUTTON_ID_CHARS {
            return Err(DeliveryError::permanent(format!(
                "WhatsApp message: button {} value has {id_chars} characters; a reply button id must be 1-{MAX_BUTTON_ID_CHARS}",
                i + 1
            )));
        }
        if !ids.insert(button.value.as_str()) {
            return Err(DeliveryError::permanent(format!(
                "WhatsApp message: button {} repeats the value of an earlier button; reply button ids must be unique",
                i + 1
            )));
        }
        let mut title = truncate_chars(label(button), MAX_BUTTON_TITLE_CHARS);
        if titles.contains(&title) {
            let suffix = format!(" {}", i + 1);
            let room = MAX_BUTTON_TITLE_CHARS - suffix.chars().count();
            title = format!("{}{suffix}", truncate_chars(label(button), room).trim_end());
        }
        titles.push(title);
    }
    Ok(buttons
        .iter()
        .zip(titles)
        .map(|(button, title)| json!({ "type": "reply", "reply": { "id": button.value, "title": title } }))
        .collect())
}

/// Split text longer than an interactive body into a head (sent as a text message) and a tail
/// of at most [`MAX_INTERACTIVE_BODY_CHARS`] (the body of the buttons): after the last
/// paragraph, line or sentence that leaves such a tail, else at the first space that does, else
/// hard at the limit.
fn split_for_buttons(text: &str) -> (&str, &str) {
    let text = text.trim_end();
    let total = text.chars().count();
    if total <= MAX_INTERACTIVE_BODY_CHARS {
        return ("", text);
    }
    // The earliest byte offset from which at most the limit remains.
    let min_start =
        text.char_indices().nth(total - MAX_INTERACTIVE_BODY_CHARS).map_or(text.len(), |(offset, _)| offset);
    for sep in ["\n\n", "\n", ". ", "? ", "! "] {
        if let Some(at) = text.rfind(sep) {
            let tail = text[at + sep.len()..].trim_start();
            if at + sep.len() >= min_start && !tail.is_empty() {
                return (text[..at + sep.trim_end().len()].trim_end(), tail);
            }
        }
    }
    match text[min_start..].find(char::is_whitespace) {
        Some(offset) if !text[min_start + offset..].trim().is_empty() => {
            (text[..min_start + offset].trim_end(), text[min_start + offset..].trim_start())
        }
        _ => (&text[..min_start], &text[min_start..]),
    }
}

/// The request bodies for a message inside the window, in sending order.
fn message_bodies(to: &str, message: &OutMessage) -> Result<Vec<Value>, DeliveryError> {
    let text = message.text.as_str();
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(DeliveryError::permanent(format!(
            "WhatsApp message: the text has {chars} characters, more than {MAX_TEXT_CHARS}"
        )));
    }
    let has_text = !text.trim().is_empty();
    if message.buttons.is_empty() {
        if !has_text {
            return Err(DeliveryError::permanent("WhatsApp message: the text is empty"));
        }
        return Ok(vec![text_body(to, text)]);
    }
    if message.buttons.len() > MAX_REPLY_BUTTONS {
        // More choices than reply buttons: list them in the text instead.
        let list: Vec<String> = message.buttons.iter().map(|b| format!("• {}", label(b))).collect();
        let list = list.join("\n");
        if !has_text {
            return Ok(vec![text_body(to, &truncate_chars(&list, MAX_TEXT_CHARS))]);
        }
        let combined = format!("{}\n\n{list}", text.trim_end());
        if combined.chars().count() <= MAX_TEXT_CHARS {
            return Ok(vec![text_body(to, &combined)]);
        }
        return Ok(vec![text_body(to, text), text_body(to, &truncate_chars(&list, MAX_TEXT_CHARS))]);
    }
    let buttons = reply_buttons(&message.buttons)?;
    if !has_text {
        // The body is required: name the choices.
        let labels: Vec<&str> = message.buttons.iter().map(label).collect();
        let body = truncate_chars(&labels.join(" / "), MAX_INTERACTIVE_BODY_CHARS);
        return Ok(vec![buttons_body(to, &body, buttons)]);
    }
    let (head, tail) = split_for_buttons(text);
    let mut out = Vec::with_capacity(2);
    if !head.trim().is_empty() {
        out.push(text_body(to, head));
    }
    out.push(buttons_body(to, tail, buttons));
    Ok(out)
}

/// The text parameter of the window template: whitespace runs collapsed to one space (Meta
/// refuses newlines, tabs and runs of more than 4 spaces), cut to the parameter limit.
fn template_parameter(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_chars(&flat, MAX_TEMPLATE_PARAMETER_CHARS)
}

/// The window template carrying the message text (or, without text, the button labels).
fn template_body(config: &WhatsappConfig, to: &str, message: &OutMessage) -> Result<Value, DeliveryError> {
    let Some(template) = &config.window_template else {
        return Err(DeliveryError::permanent(
            "WhatsApp message: outside the 24-hour window and no window_template configured",
        ));
    };
    named_template_body(template, to, message)
}

/// A `template` message of `template` whose body parameter carries the message's text.
fn named_template_body(template: &WhatsappTemplate, to: &str, message: &OutMessage) -> Result<Value, DeliveryError> {
    if template.name.trim().is_empty() || template.language.trim().is_empty() {
        return Err(DeliveryError::permanent("whatsapp.window_template needs a name and a language"));
    }
    let mut parameter = template_parameter(&message.text);
    if parameter.is_empty() {
        let labels: Vec<&str> = message.buttons.iter().map(label).collect();
        parameter = template_parameter(&labels.join(", "));
    }
    if parameter.is_empty() {
        return Err(DeliveryError::permanent("WhatsApp template message: the text is empty"));
    }
    Ok(json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": {
            "name": template.name.trim(),
            "language": { "code": template.language.trim() },
            "components": [{ "type": "body", "parameters": [{ "type": "text", "text": parameter }] }],
        },
    }))
}

/// `{api_base}/{api_version}/{phone_number_id}/messages`, after checking each part cannot
/// change the URL's meaning.
fn messages_url(config: &WhatsappConfig) -> Result<String, DeliveryError> {
    let base = config.api_base.trim().trim_end_matches('/');
    match reqwest::Url::parse(base) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        _ => return Err(DeliveryError::permanent("whatsapp.api_base must be an http:// or https:// URL")),
    }
    let version = config.api_version.trim();
    let valid_version = version.strip_prefix('v').is_some_and(|n| {
        let mut parts = n.split('.');
        let major = parts.next().is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        major && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) && n.split('.').count() <= 2
    });
    if !valid_version {
        return Err(DeliveryError::permanent("whatsapp.api_version must look like v21.0"));
    }
    let id = config.phone_number_id.trim();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DeliveryError::permanent("whatsapp.phone_number_id must be the numeric phone number id"));
    }
    Ok(format!("{base}/{version}/{id}/messages"))
}

/// Calls the Cloud API. One client (connection pool) for every phone number.
#[derive(Debug, Clone)]
pub struct WhatsappClient {
    client: reqwest::Client,
    timeout: Duration,
}

impl WhatsappClient {
    /// Reuse an existing client (see [`crate::outbound::http_client`]); `timeout` is applied to
    /// every request.
    pub fn from_client(client: reqwest::Client, timeout: Duration) -> Self {
        WhatsappClient { client, timeout }
    }

    /// POST {api_base}/{api_version}/{phone_number_id}/messages with the Bearer access token.
    ///
    /// Inside the window: a text message (≤ 4096 characters, `preview_url: false`); with 1-3
    /// buttons an interactive "button" message (reply ids = the buttons' values, titles cut to
    /// 20 characters), preceded by a text message carrying all but the last ≤ 1024 characters
    /// when the text is longer than an interactive body; with more than 3 buttons, a text
    /// message listing the labels. With `outside_window`: the configured `window_template`
    /// with the text as its body parameter, or Permanent without a template.
    ///
    /// Errors: 131047 (outside the window) Permanent; rate limits (130429, 131056, 4, 80007),
    /// 429, 5xx and transport failures Retryable (honouring `Retry-After`; 131056 waits 6 s
    /// without it); 190, 401 and 403 Unauthorized; other 4xx Permanent quoting Meta's message.
    /// No error ever shows the access token.
    pub async fn send(
        &self,
        config: &WhatsappConfig,
        to: &str,
        message: &OutMessage,
        outside_window: bool,
    ) -> Result<(), DeliveryError> {
        let token = config.access_token.expose();
        self.send_unscrubbed(config, to, message, outside_window).await.map_err(|e| without_token(e, token))
    }

    /// Send `template` to `to` (anyone, at any time: templates need no open window) with
    /// `text` as its body parameter: the WhatsApp fallback to a sales representative.
    pub async fn send_template(
        &self,
        config: &WhatsappConfig,
        to: &str,
        template: &WhatsappTemplate,
        text: &str,
    ) -> Result<(), DeliveryError> {
        let token = config.access_token.expose();
        let result = async {
            let url = messages_url(config)?;
            let to = to.trim().trim_start_matches('+');
            let body = named_template_body(template, to, &OutMessage::new(baton_core::model::Role::System, text))?;
            self.post(config, &url, &body).await
        }
        .await;
        result.map_err(|e| without_token(e, token))
    }

    /// Download a file a user sent: `GET {api_base}/{api_version}/{media_id}` (Bearer) answers
    /// `{url, mime_type, file_size, ...}`; the URL (valid for 5 minutes) is fetched with the same
    /// token. Media ids from webhooks expire after 7 days. Errors never show the token.
    pub async fn fetch_media(&self, config: &WhatsappConfig, media_id: &str) -> Result<Fetched, DeliveryError> {
        let token = config.access_token.expose();
        self.fetch_media_unscrubbed(config, media_id).await.map_err(|e| without_token(e, token))
    }

    async fn fetch_media_unscrubbed(&self, config: &WhatsappConfig, media_id: &str) -> Result<Fetched, DeliveryError> {
        if !valid_media_id(media_id) {
            return Err(DeliveryError::permanent("WhatsApp media id is not valid"));
        }
        // Checks the base, the version and the phone number id.
        messages_url(config)?;
        let base = config.api_base.trim().trim_end_matches('/');
        let url = format!("{base}/{}/{media_id}", config.api_version.trim());
        let what = "WhatsApp media lookup";
        let resp = self
            .client
            .get(&url)
            .timeout(self.timeout)
            .bearer_auth(config.access_token.expose())
            .send()
            .await
            .map_err(|e| transport_error(what, self.timeout, e))?;
        let status = resp.status().as_u16();
        let answer = read_limited(resp, MAX_RESPONSE_BYTES).await;
        let json: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let message = json["error"]["message"].as_str().map(quote).unwrap_or_default();
            let message = format!("{what} answered HTTP {status}: {message}");
            return Err(match status {
                401 | 403 => DeliveryError::Unauthorized { message },
                429 | 500..=599 => DeliveryError::retryable(message),
                _ => DeliveryError::permanent(message),
            });
        }
        if let Some(size) = json["file_size"].as_u64().filter(|n| *n > MAX_MEDIA_BYTES as u64) {
            return Err(crate::media::too_large("WhatsApp media", size));
        }
        let Some(file_url) = json["url"].as_str().filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        else {
            return Err(DeliveryError::permanent(format!("{what} answered without a download url")));
        };
        let request = self.client.get(file_url).bearer_auth(config.access_token.expose());
        let mut fetched = download(request, "WhatsApp media download", self.timeout).await?;
        if let Some(mime) = json["mime_type"].as_str().filter(|m| !m.trim().is_empty()) {
            fetched.content_type = Some(mime.trim().to_string());
        }
        Ok(fetched)
    }

    async fn send_unscrubbed(
        &self,
        config: &WhatsappConfig,
        to: &str,
        message: &OutMessage,
        outside_window: bool,
    ) -> Result<(), DeliveryError> {
        let url = messages_url(config)?;
        let to = to.trim();
        if to.is_empty() {
            return Err(DeliveryError::permanent("WhatsApp message: the recipient is empty"));
        }
        let bodies =
            if outside_window { vec![template_body(config, to, message)?] } else { message_bodies(to, message)? };
        for body in &bodies {
            self.post(config, &url, body).await?;
        }
        Ok(())
    }

    async fn post(&self, config: &WhatsappConfig, url: &str, body: &Value) -> Result<(), DeliveryError> {
        let what = match body["type"].as_str() {
            Some("template") => "WhatsApp send (template)",
            Some("interactive") => "WhatsApp send (buttons)",
            _ => "WhatsApp send",
        };
        let resp = self
            .client
            .post(url)
            .timeout(self.timeout)
            .bearer_auth(config.access_token.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| transport_error(what, self.timeout, e))?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let answer = read_limited(resp, MAX_RESPONSE_BYTES).await;
        if (200..300).contains(&status) {
            let wamid = serde_json::from_slice::<Value>(&answer)
                .ok()
                .and_then(|v| v["messages"][0]["id"].as_str().map(str::to_string));
            tracing::debug!(what, status, wamid = wamid.as_deref().unwrap_or("-"), "answered");
            return Ok(());
        }
        tracing::debug!(what, status, "answered");
        Err(status_error(what, status, retry_after.as_deref(), &answer))
    }
}

/// The Graph error in an answer: `(code, message with details)`.
fn graph_error(body: &[u8]) -> (Option<i64>, String) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return (None, String::new());
    };
    let error = &value["error"];
    let code = error["code"].as_i64().or_else(|| error["code"].as_str().and_then(|c| c.parse().ok()));
    let message = error["message"].as_str().map(str::trim).unwrap_or_default();
    let details = error["error_data"]["details"].as_str().map(str::trim).unwrap_or_default();
    let text = match (message.is_empty(), details.is_empty() || message.contains(details)) {
        (true, true) => String::new(),
        (true, false) => details.to_string(),
        (false, true) => message.to_string(),
        (false, false) => format!("{message} ({details})"),
    };
    (code, text)
}

/// Map a non-2xx answer by Meta's error `code` first, then by HTTP status.
fn status_error(what: &str, status: u16, retry_after: Option<&str>, body: &[u8]) -> DeliveryError {
    let (code, text) = graph_error(body);
    let detail = if text.is_empty() { String::new() } else { format!(": \"{}\"", quote(&text)) };
    let message = format!("{what} answered HTTP {status}{detail}");
    let retry_after = retry_after_ms(retry_after);
    match code {
        Some(ERROR_REENGAGEMENT) => DeliveryError::permanent(format!(
            "{message}: the user's 24-hour customer-service window has closed (error 131047); \
             only an approved template can reach them until they write again"
        )),
        Some(ERROR_PAIR_RATE_LIMIT) => {
            DeliveryError::Retryable { message, retry_after_ms: retry_after.or(Some(PAIR_RATE_LIMIT_RETRY_MS)) }
        }
        Some(c) if RETRYABLE_CODES.contains(&c) => DeliveryError::Retryable { message, retry_after_ms: retry_after },
        Some(0 | ERROR_ACCESS_TOKEN | 10 | 200..=299) => DeliveryError::Unauthorized {
            message: format!("{message} (is whatsapp.access_token valid, unexpired and allowed to send?)"),
        },
        _ => match status {
            401 | 403 => DeliveryError::Unauthorized { message },
            429 | 500..=599 => DeliveryError::Retryable { message, retry_after_ms: retry_after },
            _ => DeliveryError::permanent(message),
        },
    }
}

/// The same error with every occurrence of the access token replaced.
fn without_token(err: DeliveryError, token: &str) -> DeliveryError {
    if token.is_empty() {
        return err;
    }
    let scrub = |m: String| if m.contains(token) { m.replace(token, "<access token>") } else { m };
    match err {
        DeliveryError::Retryable { message, retry_after_ms } => {
            DeliveryError::Retryable { message: scrub(message), retry_after_ms }
        }
        DeliveryError::Unauthorized { message } => DeliveryError::Unauthorized { message: scrub(message) },
        DeliveryError::Permanent { message } => DeliveryError::Permanent { message: scrub(message) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::agent::WhatsappTemplate;
    use baton_core::model::{Role, Secret};

    const TOKEN: &str = "EAAG-whatsapp-access-token";
    const APP_SECRET: &str = "0123456789abcdef0123456789abcdef";
    const PHONE_ID: &str = "106540352242922";

    fn config(api_base: &str) -> WhatsappConfig {
        WhatsappConfig {
            phone_number_id: PHONE_ID.into(),
            access_token: Secret(TOKEN.into()),
            app_secret: Secret(APP_SECRET.into()),
            verify_token: Secret("verify-me".into()),
            api_base: api_base.into(),
            api_version: "v21.0".into(),
            window_template: None,
        }
    }

    fn with_buttons(text: &str, buttons: &[(&str, &str)]) -> OutMessage {
        let mut m = OutMessage::new(Role::Bot, text);
        m.buttons = buttons.iter().map(|(l, v)| Button { label: l.to_string(), value: v.to_string() }).collect();
        m
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signature_matches_a_published_x_hub_signature_256_example() {
        // GitHub documents the same `sha256=` HMAC-SHA256 header with this example.
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_signature("It's a Secret to Everybody", b"Hello, World!", Some(header)));
        assert_eq!(sign("It's a Secret to Everybody", b"Hello, World!"), header);
    }

    #[test]
    fn signature_rejections() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let good = sign(APP_SECRET, body);
        assert!(verify_signature(APP_SECRET, body, Some(&good)));
        assert!(verify_signature(APP_SECRET, body, Some(&format!(" {good} "))));
        assert!(!verify_signature(APP_SECRET, body, None));
        assert!(!verify_signature(APP_SECRET, body, Some("")));
        assert!(!verify_signature(APP_SECRET, body, Some(&good["sha256=".len()..])));
        assert!(!verify_signature(APP_SECRET, body, Some(&good.replace("sha256=", "sha1="))));
        assert!(!verify_signature(APP_SECRET, body, Some(&good[..good.len() - 2])));
        assert!(!verify_signature(APP_SECRET, body, Some(&format!("{}zz", &good[..good.len() - 2]))));
        assert!(!verify_signature("other", body, Some(&good)));
        assert!(!verify_signature(APP_SECRET, br#"{"object":"page","entry":[]}"#, Some(&good)));
        assert!(!verify_signature("", body, Some(&sign("", body))));
    }

    #[test]
    fn subscription_handshake() {
        let c = config("https://graph.facebook.com");
        let ok = |mode, token, challenge| verify_subscription(&c, mode, token, challenge);
        assert_eq!(ok(Some("subscribe"), Some("verify-me"), Some("1158201444")), Some("1158201444".into()));
        assert_eq!(ok(Some("subscribe"), Some("verify-mE"), Some("1")), None);
        assert_eq!(ok(Some("subscribe"), Some("verify-me-too"), Some("1")), None);
        assert_eq!(ok(Some("unsubscribe"), Some("verify-me"), Some("1")), None);
        assert_eq!(ok(None, Some("verify-me"), Some("1")), None);
        assert_eq!(ok(Some("subscribe"), None, Some("1")), None);
        assert_eq!(ok(Some("subscribe"), Some("verify-me"), None), None);
        assert_eq!(ok(Some("subscribe"), Some("verify-me"), Some("")), None);
        assert_eq!(ok(Some("subscribe"), Some("verify-me"), Some("a\nb")), None);
        assert_eq!(ok(Some("subscribe"), Some("verify-me"), Some(&"9".repeat(MAX_CHALLENGE_BYTES + 1))), None);
        let mut empty = c.clone();
        empty.verify_token = Secret(String::new());
        assert_eq!(verify_subscription(&empty, Some("subscribe"), Some(""), Some("1")), None);
    }

    fn envelope(phone_number_id: &str, value: Value) -> Vec<u8> {
        let mut value = value;
        value["messaging_product"] = json!("whatsapp");
        value["metadata"] = json!({"display_phone_number": "15550783881", "phone_number_id": phone_number_id});
        json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [
            {"field": "messages", "value": value}
        ]}]})
        .to_string()
        .into_bytes()
    }

    fn message(kind: &str, extra: Value) -> Value {
        let mut m =
            json!({"from": "16505551234", "id": format!("wamid.{kind}"), "timestamp": "1744344496", "type": kind});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    }

    fn kinds(messages: Vec<Value>) -> Vec<InboundKind> {
        let body = envelope(
            PHONE_ID,
            json!({"contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}], "messages": messages}),
        );
        parse_webhook(&body, PHONE_ID).unwrap().messages.into_iter().map(|m| m.kind).collect()
    }

    #[test]
    fn every_message_type_parses() {
        let got = kinds(vec![
            message("text", json!({"text": {"body": "Hello"}})),
            message(
                "interactive",
                json!({"interactive": {"type": "button_reply", "button_reply": {"id": "handoff", "title": "Talk to us"}}}),
            ),
            message(
                "interactive",
                json!({"interactive": {"type": "list_reply", "list_reply": {"id": "row-2", "title": "Two", "description": "d"}}}),
            ),
            message("interactive", json!({"interactive": {"type": "nfm_reply", "nfm_reply": {"response_json": "{}"}}})),
            message(
                "button",
                json!({"context": {"from": "15550783881", "id": "wamid.x"}, "button": {"text": "No", "payload": "No-Button-Payload"}}),
            ),
            message("button", json!({"button": {"text": "Yes"}})),
            message(
                "image",
                json!({"image": {"caption": "look", "mime_type": "image/jpeg", "sha256": "h", "id": "1003383421387256"}}),
            ),
            message(
                "audio",
                json!({"audio": {"mime_type": "audio/ogg; codecs=opus", "id": "1908647269898587", "voice": true}}),
            ),
            message("audio", json!({"audio": {"mime_type": "audio/mpeg", "id": "77"}})),
            message("video", json!({"video": {"id": "88", "caption": " "}})),
            message("document", json!({"document": {"id": "99", "filename": "report.pdf", "caption": "Q3"}})),
            message("sticker", json!({"sticker": {"id": "55", "mime_type": "image/webp", "animated": false}})),
            message(
                "location",
                json!({"location": {"latitude": 45.815, "longitude": 15.9819, "name": "Zagreb", "address": "Trg bana Jelačića 1"}}),
            ),
            message("contacts", json!({"contacts": [{"name": {"formatted_name": "A"}}]})),
            message("reaction", json!({"reaction": {"message_id": "wamid.y", "emoji": "👍"}})),
            message(
                "unsupported",
                json!({"errors": [{"code": 131051, "title": "Message type unknown"}], "unsupported": {"type": "edit"}}),
            ),
            message("unknown", json!({"errors": [{"code": 131051}]})),
        ]);
        let media = |kind: &str, id: &str, caption: Option<&str>, filename: Option<&str>| InboundKind::Media {
            kind: kind.into(),
            id: id.into(),
            caption: caption.map(str::to_string),
            filename: filename.map(str::to_string),
        };
        assert_eq!(
            got,
            vec![
                InboundKind::Text("Hello".into()),
                InboundKind::Button("handoff".into()),
                InboundKind::Button("row-2".into()),
                InboundKind::Unsupported("nfm_reply".into()),
                InboundKind::Button("No-Button-Payload".into()),
                InboundKind::Button("Yes".into()),
                media("image", "1003383421387256", Some("look"), None),
                media("voice", "1908647269898587", None, None),
                media("audio", "77", None, None),
                media("video", "88", None, None),
                media("document", "99", Some("Q3"), Some("report.pdf")),
                media("sticker", "55", None, None),
                InboundKind::Location {
                    latitude: 45.815,
                    longitude: 15.9819,
                    name: Some("Zagreb".into()),
                    address: Some("Trg bana Jelačića 1".into())
                },
                InboundKind::Unsupported("contacts".into()),
                InboundKind::Unsupported("reaction".into()),
                InboundKind::Unsupported("edit".into()),
                InboundKind::Unsupported("unknown".into()),
            ]
        );
    }

    #[test]
    fn message_fields_statuses_and_skipping() {
        let value = json!({
            "contacts": [{"profile": {"name": "Other"}, "wa_id": "385911111111"}, {"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
            "messages": [
                message("text", json!({"text": {"body": "hi"}})),
                message("text", json!({"from": "+1 650 555 1234", "text": {"body": "formatted"}})),
                message("text", json!({"from": "4477", "timestamp": 1750000000, "text": {"body": "no contact"}})),
            ],
            "statuses": [
                {"id": "wamid.s1", "status": "delivered", "timestamp": "1750030073", "recipient_id": "16505551234",
                 "pricing": {"billable": true, "pricing_model": "PMP", "category": "service"}},
                {"id": "wamid.s2", "status": "failed", "timestamp": "1751142888", "recipient_id": "16505551234",
                 "errors": [{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
                             "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
                             "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}]},
            ],
        });
        let got = parse_webhook(&envelope(PHONE_ID, value.clone()), PHONE_ID).unwrap();
        assert_eq!(
            got.messages[0],
            Inbound {
                message_id: "wamid.text".into(),
                from: "16505551234".into(),
                name: Some("Sheena Nelson".into()),
                timestamp: 1_744_344_496_000,
                kind: InboundKind::Text("hi".into()),
            }
        );
        assert_eq!(got.messages[1].name.as_deref(), Some("Sheena Nelson"));
        assert_eq!((got.messages[2].name.as_deref(), got.messages[2].timestamp), (None, 1_750_000_000_000));
        assert_eq!(
            got.statuses,
            vec![
                Status {
                    message_id: "wamid.s1".into(),
                    recipient: "16505551234".into(),
                    status: "delivered".into(),
                    error: None
                },
                Status {
                    message_id: "wamid.s2".into(),
                    recipient: "16505551234".into(),
                    status: "failed".into(),
                    error: Some("131047 Re-engagement message (Message failed to send because more than 24 hours have passed since the customer last replied to this number.)".into()),
                },
            ]
        );
        // Another phone number of the same account, other fields and other objects are skipped.
        assert_eq!(parse_webhook(&envelope("999", value), PHONE_ID), Ok(Webhook::default()));
        let other_field = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
            {"field": "message_template_status_update", "value": {"event": "APPROVED"}}]}]});
        assert_eq!(parse_webhook(other_field.to_string().as_bytes(), PHONE_ID), Ok(Webhook::default()));
        assert_eq!(parse_webhook(br#"{"object":"page","entry":[{}]}"#, PHONE_ID), Ok(Webhook::default()));
        // A value with only account-level errors carries nothing to act on.
        let errors = envelope(PHONE_ID, json!({"errors": [{"code": 130429, "title": "Rate limit hit"}]}));
        assert_eq!(parse_webhook(&errors, PHONE_ID), Ok(Webhook::default()));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = |messages: Vec<Value>| {
            parse_webhook(&envelope(PHONE_ID, json!({"messages": messages})), PHONE_ID).unwrap_err().to_string()
        };
        let at = "entry[0].changes[0].value.messages[0]";
        let mut m = message("text", json!({"text": {"body": "x"}}));
        m.as_object_mut().unwrap().remove("from");
        assert_eq!(err(vec![m]), format!("{at}.from: missing"));
        assert_eq!(err(vec![message("text", json!({"id": ""}))]), format!("{at}.id: must not be empty"));
        assert_eq!(err(vec![message("text", json!({}))]), format!("{at}.text.body: missing"));
        assert_eq!(
            err(vec![message("text", json!({"timestamp": "soon", "text": {"body": "x"}}))]),
            format!("{at}.timestamp: must be unix seconds")
        );
        assert_eq!(err(vec![message("image", json!({"image": {"caption": "c"}}))]), format!("{at}.image.id: missing"));
        assert_eq!(
            err(vec![message("location", json!({"location": {"latitude": 91.0, "longitude": 1.0}}))]),
            format!("{at}.location.latitude: must be a number from -90 to 90")
        );
        assert_eq!(
            err(vec![message("interactive", json!({"interactive": {"type": "button_reply"}}))]),
            format!("{at}.interactive.button_reply.id: missing")
        );
        assert_eq!(err(vec![message("button", json!({"button": {}}))]), format!("{at}.button.payload: missing"));
        assert_eq!(err(vec![json!("x")]), format!("{at}: must be an object"));
        let status = envelope(PHONE_ID, json!({"statuses": [{"id": "w", "status": "sent"}]}));
        assert_eq!(
            parse_webhook(&status, PHONE_ID).unwrap_err().to_string(),
            "entry[0].changes[0].value.statuses[0].recipient_id: missing"
        );
        let no_metadata = json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {}}]}]});
        assert_eq!(
            parse_webhook(no_metadata.to_string().as_bytes(), PHONE_ID).unwrap_err().to_string(),
            "entry[0].changes[0].value.metadata.phone_number_id: missing"
        );
        assert_eq!(parse_webhook(b"{}", PHONE_ID).unwrap_err().to_string(), "object: missing");
        assert_eq!(
            parse_webhook(br#"{"object":"whatsapp_business_account"}"#, PHONE_ID).unwrap_err().to_string(),
            "entry: missing"
        );
        assert_eq!(parse_webhook(b"[]", PHONE_ID), Err(ParseError::NotObject));
        assert!(matches!(parse_webhook(b"nope", PHONE_ID), Err(ParseError::NotJson(_))));
        assert_eq!(parse_webhook(&vec![b' '; MAX_WEBHOOK_BYTES + 1], PHONE_ID), Err(ParseError::TooLarge));
    }

    #[test]
    fn placeholders() {
        let media = |caption: Option<&str>, filename: Option<&str>| InboundKind::Media {
            kind: "document".into(),
            id: "99".into(),
            caption: caption.map(str::to_string),
            filename: filename.map(str::to_string),
        };
        assert_eq!(describe(&InboundKind::Text("hi".into())), "hi");
        assert_eq!(describe(&InboundKind::Button("yes".into())), "[button: yes]");
        assert_eq!(describe(&media(None, None)), "[document (media id 99)]");
        assert_eq!(describe(&media(Some("Q3"), Some("r.pdf"))), "[document \"r.pdf\" (media id 99): Q3]");
        let location = |name: Option<&str>, address: Option<&str>| InboundKind::Location {
            latitude: 45.81,
            longitude: 15.98,
            name: name.map(str::to_string),
            address: address.map(str::to_string),
        };
        assert_eq!(describe(&location(Some("Zagreb"), None)), "[location: 45.81, 15.98 Zagreb]");
        assert_eq!(describe(&location(Some("Zagreb"), Some("Trg 1"))), "[location: 45.81, 15.98 Zagreb, Trg 1]");
        assert_eq!(describe(&location(None, None)), "[location: 45.81, 15.98]");
        assert_eq!(describe(&InboundKind::Unsupported("reaction".into())), "[unsupported message: reaction]");
    }

    #[test]
    fn text_and_button_bodies() {
        let bodies = message_bodies("385911234567", &OutMessage::new(Role::Human, "Hello")).unwrap();
        assert_eq!(
            bodies,
            vec![json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "385911234567",
                "type": "text", "text": {"preview_url": false, "body": "Hello"}})]
        );
        let m = with_buttons(
            "Still there?",
            &[("Yes, I am still here!", "yes"), ("", "no"), ("Yes, I am still here?", "y2")],
        );
        let bodies = message_bodies("1", &m).unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(
            bodies[0]["interactive"],
            json!({"type": "button", "body": {"text": "Still there?"}, "action": {"buttons": [
                {"type": "reply", "reply": {"id": "yes", "title": "Yes, I am still her…"}},
                {"type": "reply", "reply": {"id": "no", "title": "no"}},
                {"type": "reply", "reply": {"id": "y2", "title": "Yes, I am still h… 3"}},
            ]}})
        );
        // More than three: the labels are listed in the text.
        let many = with_buttons("Pick", &[("A", "a"), ("B", "b"), ("C", "c"), ("D", "d")]);
        assert_eq!(message_bodies("1", &many).unwrap()[0]["text"]["body"], "Pick\n\n• A\n• B\n• C\n• D");
        let long_many = with_buttons(&"x".repeat(4090), &[("A", "a"), ("B", "b"), ("C", "c"), ("D", "d")]);
        let bodies = message_bodies("1", &long_many).unwrap();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[1]["text"]["body"], "• A\n• B\n• C\n• D");
        // Limits.
        let e = message_bodies("1", &with_buttons("x", &[("a", &"v".repeat(257))])).unwrap_err();
        assert!(matches!(e, DeliveryError::Permanent { ref message } if message.contains("button 1")), "{e:?}");
        assert!(message_bodies("1", &with_buttons("x", &[("a", &"v".repeat(256))])).is_ok());
        assert!(matches!(
            message_bodies("1", &with_buttons("x", &[("a", "v"), ("b", "v")])),
            Err(DeliveryError::Permanent { .. })
        ));
        assert!(matches!(message_bodies("1", &with_buttons("x", &[("a", " ")])), Err(DeliveryError::Permanent { .. })));
        assert!(message_bodies("1", &OutMessage::new(Role::Bot, "ü".repeat(4096))).is_ok());
        for text in ["ü".repeat(4097), " ".into()] {
            assert!(matches!(
                message_bodies("1", &OutMessage::new(Role::Bot, text)),
                Err(DeliveryError::Permanent { .. })
            ));
        }
        // Buttons without text name the choices in the body.
        let bare = message_bodies("1", &with_buttons("", &[("Yes", "y"), ("No", "n")])).unwrap();
        assert_eq!(bare[0]["interactive"]["body"]["text"], "Yes / No");
    }

    #[test]
    fn long_text_with_buttons_splits_at_a_natural_break() {
        let first = "a".repeat(1500);
        let question = "Would you like to talk to a person?";
        let text = format!("{first}\n\n{question}");
        let bodies = message_bodies("1", &with_buttons(&text, &[("Yes", "y")])).unwrap();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0]["text"]["body"], first.as_str());
        assert_eq!(bodies[1]["interactive"]["body"]["text"], question);
        // Sentences, then words, then a hard cut; the tail always fits an interactive body.
        let sentences = format!("{}. {}", "b".repeat(1200), "c".repeat(1000));
        let (head, tail) = split_for_buttons(&sentences);
        assert_eq!((head.len(), tail), (1201, "c".repeat(1000).as_str()));
        let words = format!("{} {}", "d ".repeat(700), "e".repeat(10));
        let (head, tail) = split_for_buttons(&words);
        assert!(tail.chars().count() <= MAX_INTERACTIVE_BODY_CHARS && tail.chars().count() > 1000, "{}", tail.len());
        assert_eq!(format!("{head} {tail}").split_whitespace().count(), words.split_whitespace().count());
        let solid = "f".repeat(3000);
        let (head, tail) = split_for_buttons(&solid);
        assert_eq!((head.len(), tail.len()), (3000 - MAX_INTERACTIVE_BODY_CHARS, MAX_INTERACTIVE_BODY_CHARS));
        let emoji = "🍎".repeat(2000);
        let (head, tail) = split_for_buttons(&emoji);
        assert_eq!((head.chars().count(), tail.chars().count()), (976, 1024));
    }

    #[test]
    fn template_body_flattens_and_cuts_the_text() {
        let mut c = config("https://graph.facebook.com");
        let m = OutMessage::new(Role::Human, "Hello,\n\nyour order\tshipped.      Bye");
        let e = template_body(&c, "1", &m).unwrap_err();
        assert_eq!(
            e,
            DeliveryError::permanent("WhatsApp message: outside the 24-hour window and no window_template configured")
        );
        c.window_template = Some(WhatsappTemplate { name: "late_reply".into(), language: "en_US".into() });
        assert_eq!(
            template_body(&c, "385911234567", &m).unwrap(),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "385911234567", "type": "template",
                "template": {"name": "late_reply", "language": {"code": "en_US"}, "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": "Hello, your order shipped. Bye"}]}]}})
        );
        let long = template_body(&c, "1", &OutMessage::new(Role::Human, "ž".repeat(3000))).unwrap();
        let text = long["template"]["components"][0]["parameters"][0]["text"].as_str().unwrap();
        assert_eq!(text.chars().count(), MAX_TEMPLATE_PARAMETER_CHARS);
        assert!(text.ends_with('…'));
        assert!(template_body(&c, "1", &OutMessage::new(Role::Human, " \n ")).is_err());
    }

    #[test]
    fn urls_are_checked() {
        let mut c = config("https://graph.facebook.com/");
        assert_eq!(messages_url(&c).unwrap(), format!("https://graph.facebook.com/v21.0/{PHONE_ID}/messages"));
        for version in ["21.0", "v21.0/../x", "v", "v21.", "v1.2.3", "v21.0?x"] {
            c.api_version = version.into();
            assert!(messages_url(&c).is_err(), "{version}");
        }
        c.api_version = "v22".into();
        assert!(messages_url(&c).is_ok());
        c.phone_number_id = "106/../me".into();
        assert!(messages_url(&c).is_err());
        assert!(messages_url(&config("ftp://x")).is_err());
    }

    #[test]
    fn error_mapping() {
        let graph = |code: i64, message: &str| {
            json!({"error": {"message": message, "type": "OAuthException", "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": "some details"}, "fbtrace_id": "A1"}})
            .to_string()
            .into_bytes()
        };
        let e = status_error("WhatsApp send", 400, None, &graph(131047, "(#131047) Re-engagement message"));
        let DeliveryError::Permanent { message } = &e else { panic!("{e:?}") };
        assert!(message.contains("24-hour") && message.contains("131047"), "{message}");
        assert_eq!(
            status_error("WhatsApp send", 400, None, &graph(131056, "(#131056) pair rate limit hit")),
            DeliveryError::Retryable {
                message: "WhatsApp send answered HTTP 400: \"(#131056) pair rate limit hit (some details)\"".into(),
                retry_after_ms: Some(PAIR_RATE_LIMIT_RETRY_MS)
            }
        );
        assert!(matches!(
            status_error("x", 400, Some("30"), &graph(131056, "m")),
            DeliveryError::Retryable { retry_after_ms: Some(30_000), .. }
        ));
        for code in [130429, 4, 80007, 2, 133004] {
            assert!(
                matches!(
                    status_error("x", 400, None, &graph(code, "m")),
                    DeliveryError::Retryable { retry_after_ms: None, .. }
                ),
                "{code}"
            );
        }
        assert!(matches!(
            status_error("x", 429, Some("7"), b"{}"),
            DeliveryError::Retryable { retry_after_ms: Some(7000), .. }
        ));
        for status in [500, 502, 503] {
            assert!(matches!(status_error("x", status, None, b"<html>"), DeliveryError::Retryable { .. }));
        }
        for (status, code) in [(401, 190), (401, 0), (403, 10), (403, 200), (400, 190)] {
            assert!(
                matches!(status_error("x", status, None, &graph(code, "m")), DeliveryError::Unauthorized { .. }),
                "{code}"
            );
        }
        for status in [401, 403] {
            assert!(matches!(status_error("x", status, None, b""), DeliveryError::Unauthorized { .. }));
        }
        assert_eq!(
            status_error("WhatsApp send", 400, None, &graph(131026, "(#131026) Message undeliverable")),
            DeliveryError::permanent(
                "WhatsApp send answered HTTP 400: \"(#131026) Message undeliverable (some details)\""
            )
        );
        assert_eq!(status_error("x", 404, None, b"not json"), DeliveryError::permanent("x answered HTTP 404"));
        let long = graph(100, &"y\n".repeat(400));
        let DeliveryError::Permanent { message } = status_error("x", 400, None, &long) else { panic!() };
        assert!(!message.contains('\n') && message.contains('…') && message.chars().count() < 260, "{message}");
        let scrubbed = without_token(DeliveryError::permanent(format!("token {TOKEN} here")), TOKEN);
        assert_eq!(scrubbed, DeliveryError::permanent("token <access token> here"));
    }

    use crate::testutil::scripted;

    fn client() -> WhatsappClient {
        WhatsappClient::from_client(
            crate::outbound::http_client(Duration::from_secs(5), crate::outbound::Targets::Any),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn sends_go_to_the_messages_path_with_the_token() {
        let ok = json!({"messaging_product": "whatsapp", "contacts": [{"input": "1", "wa_id": "1"}], "messages": [{"id": "wamid.1"}]});
        let (base, seen) = scripted(vec![(200, ok)]).await;
        let mut c = config(&format!("{base}/"));
        let wa = client();
        wa.send(&c, "385911234567", &OutMessage::new(Role::Human, "hi"), false).await.unwrap();
        let long = format!("{}\n\nOK?", "z".repeat(2000));
        wa.send(&c, "385911234567", &with_buttons(&long, &[("Yes", "y")]), false).await.unwrap();
        let e = wa.send(&c, "385911234567", &OutMessage::new(Role::Human, "late"), true).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Permanent { .. }));
        c.window_template = Some(WhatsappTemplate { name: "late_reply".into(), language: "en".into() });
        wa.send(&c, "385911234567", &OutMessage::new(Role::Human, "late"), true).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert!(seen.iter().all(|s| s.path == format!("/v21.0/{PHONE_ID}/messages")));
        assert!(seen.iter().all(|s| s.header("authorization").as_deref() == Some(&format!("Bearer {TOKEN}")[..])));
        let types: Vec<&str> = seen.iter().map(|s| s.body["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["text", "text", "interactive", "template"]);
        assert_eq!(seen[2].body["interactive"]["body"]["text"], "OK?");
    }

    #[tokio::test]
    async fn http_errors_map_and_never_show_the_token() {
        let graph = |code: i64, message: &str| json!({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "A"}});
        let (base, _) = scripted(vec![
            (401, graph(190, &format!("Error validating access token {TOKEN}"))),
            (400, graph(131047, "(#131047) Re-engagement message")),
            (400, graph(130429, "(#130429) Rate limit hit")),
            (503, graph(2, "(#2) Service temporarily unavailable")),
            (400, graph(100, "(#100) Invalid parameter")),
        ])
        .await;
        let c = config(&base);
        let wa = client();
        let m = OutMessage::new(Role::Human, "x");
        let mut errors = Vec::new();
        for _ in 0..5 {
            errors.push(wa.send(&c, "1", &m, false).await.unwrap_err());
        }
        assert!(matches!(errors[0], DeliveryError::Unauthorized { .. }), "{:?}", errors[0]);
        assert!(matches!(errors[1], DeliveryError::Permanent { .. }), "{:?}", errors[1]);
        assert!(matches!(errors[2], DeliveryError::Retryable { .. }), "{:?}", errors[2]);
        assert!(matches!(errors[3], DeliveryError::Retryable { .. }), "{:?}", errors[3]);
        assert!(matches!(errors[4], DeliveryError::Permanent { .. }), "{:?}", errors[4]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        errors.push(wa.send(&config(&dead), "1", &m, false).await.unwrap_err());
        assert!(matches!(errors[5], DeliveryError::Retryable { .. }), "{:?}", errors[5]);
        for e in &errors {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(TOKEN), "{text}");
        }
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let app = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "3")],
                axum::Json(json!({"error": {"message": "(#4) Application request limit reached", "code": 4}})),
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let e = client().send(&config(&base), "1", &OutMessage::new(Role::Bot, "x"), false).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Retryable { retry_after_ms: Some(3000), .. }), "{e:?}");
    }
}
