//! Intercom: the hub as a teammate answering Messenger conversations (desk -> desk, seed 004)
//! and Intercom as the human desk for users of other channels (other channel -> desk).
//!
//! - [`verify_signature`]: `X-Hub-Signature` on webhook bodies.
//! - [`parse`]: `conversation.*` and `ping` notifications, reduced to what the hub acts on,
//!   with the notification id (`notif_...`) as the idempotency key.
//! - [`IntercomClient`]: the REST calls (the AI's reply as the bot teammate) and recognition of
//!   the hub's own replies; [`IntercomDesk`]: the `Desk` port.
//!
//! # Wire facts (research, with sources and confidence)
//!
//! Tags as in `PROTOCOLS.md`: **[C]** the vendor's own docs or SDK, **[S]** secondary
//! (third-party code, community answers, copies of the docs), **[U]** unconfirmed: the most
//! likely form, kept in one constant each (listed below) so it is easy to change.
//!
//! 1. **Auth, hosts, version.** Every call sends `Authorization: Bearer <access token>`,
//!    `Accept: application/json`, JSON bodies and a pinned `Intercom-Version` (without it the
//!    app's version from the Developer Hub applies) [C]
//!    <https://developers.intercom.com/docs/references/rest-api/api.intercom.io/Models/intercom_version>.
//!    Hosts per region: `https://api.intercom.io`, `https://api.eu.intercom.io`,
//!    `https://api.au.intercom.io` [C] (server list of the 2.11 reference,
//!    <https://developers.intercom.com/docs/references/2.11/rest-api/api.intercom.io/models/conversation_parts>).
//! 2. **Errors and rate limits.** Errors are `{"type":"error.list","request_id","errors":[{"code",
//!    "message"}]}` [C] <https://developers.intercom.com/docs/references/2.1/rest-api/contacts/create-contact>.
//!    Over the limit Intercom answers `429` with code `rate_limit_exceeded` and
//!    `X-RateLimit-Reset` as a UNIX timestamp in seconds; limits are counted in 10-second
//!    windows [C] <https://developers.intercom.com/docs/references/2.17/rest-api/errors/rate-limiting>.
//!    We wait until that reset (at least 1 s, at most [`MAX_RATE_LIMIT_WAIT_MS`]); `Retry-After`
//!    is honoured when the reset header is missing.
//! 3. **Contacts.** `POST /contacts/search` with `{"query":{"field":"email","operator":"=",
//!    "value":...}}` answers `{"type":"list","data":[contact...],"total_count","pages"}`; a new
//!    contact can take *a few minutes* to become searchable [C]
//!    <https://developers.intercom.com/docs/references/2.17/rest-api/api.intercom.io/contacts/searchcontacts>;
//!    search pagination `{"per_page": n}` [S] (community thread
//!    <https://community.intercom.com/api-webhooks-23/how-to-iterate-paginated-contacts-search-results-2038>).
//!    `POST /contacts` with `{role:"user", email, external_id}`; a duplicate is answered `409`
//!    `conflict` "A contact matching those details already exists with id=<id>" [C] (same
//!    create-contact page), or "An archived contact matching those details already exists with
//!    id=<id>" [S] (intercom/Intercom-OpenAPI PR #543); an archived one is unarchived with
//!    `POST /contacts/{id}/unarchive` [C]
//!    <https://developers.intercom.com/docs/references/2.6/rest-api/contacts/unarchive-a-contact>.
//!    Because search lags, the hub keeps its own e-mail -> contact map in the `KeyValue` store
//!    and reads the id out of a 409 ([`CONFLICT_ID_MARKER`]).
//! 4. **Conversations.** `POST /conversations` with `{"from":{"type":"user"|"lead","id"},
//!    "body"}`; the body is plain text ("HTML is not supported") [C]
//!    <https://developers.intercom.com/docs/references/rest-api/api.intercom.io/Models/create_conversation_request/>;
//!    the answer is a *Message* `{"type":"user_message","id","conversation_id",...}` [C]
//!    <https://developers.intercom.com/docs/references/2.6/rest-api/conversations/create-a-conversation/>.
//!    Whether every version carries `conversation_id` at the top level is **[U]**
//!    ([`CONVERSATION_ID_PATHS`]). Replies: `POST /conversations/{id}/reply` with
//!    `{message_type:"comment", type:"user", intercom_user_id, body}` or `{message_type:
//!    "comment"|"note", type:"admin", admin_id, body}` [C] (intercom-client 6.x
//!    `ReplyToConversationRequest`, `AdminReplyConversationRequest`). Whether line breaks in a
//!    plain-text comment are kept in Messenger is **[U]**; bodies are sent as plain text.
//!    `GET /conversations/{id}` lists `contacts.contacts[].id` [C] (conversation model).
//! 5. **Assignment and close.** `POST /conversations/{id}/parts` with `{message_type:
//!    "assignment", type, admin_id (who acts), assignee_id}` where **`type` is the assignee's
//!    kind, `"admin"` or `"team"`** [C] (intercom-client `AssignConversationRequest.Type`;
//!    2.x "Assign a conversation": "type: Accepts admin or team") [S] (Pipedream's Intercom
//!    action sends `type:"team"` with the team id); `assignee_id` `"0"` unassigns [C]. The
//!    optional `body` of an assignment "send[s] a response in the conversation" [C]
//!    (`AssignConversationRequest.body`) while older docs say it "appears as note" [S]: as it may
//!    reach the user, the hub sends **no body** with assignments and writes the handoff reason
//!    as a separate internal note (`message_type:"note"`). A conversation can have an admin and a
//!    team assignee at once [C]; in a Messenger conversation the bot teammate may hold the admin
//!    assignment, so after a team-only assignment that leaves the bot as admin assignee (or when
//!    no assignee is configured) the admin is unassigned (`"0"`); that this leaves the team in
//!    place is **[U]**. Close: `{message_type:"close", type:"admin", admin_id, body}`, the body
//!    being "a message in the conversation to provide additional context to the user and other
//!    teammates" [C] (intercom-client `CloseConversationRequest`).
//! 6. **Identity.** `GET /me` answers the token's admin [C]
//!    <https://developers.intercom.com/docs/references/2.15/rest-api/api.intercom.io/admins/identifyadmin>
//!    (the 2.6 page calls it "OAuth only" [C], so only 401/403 there count as a failure);
//!    `GET /admins/{id}` checks `bot_admin_id` [C].
//! 7. **Webhooks.** Envelope `{type:"notification_event", id:"notif_...", topic, app_id,
//!    data:{type:"notification_event_data", item}, delivery_attempts, first_sent_at,
//!    created_at, ...}`; `ping` carries `"id": null` and `item.type:"ping"` [S] (zulip's
//!    Intercom fixtures, `zerver/webhooks/intercom/fixtures/*.json`). For `conversation.*`
//!    topics `item` is the Conversation; the new part(s) are in
//!    `item.conversation_parts.conversation_parts[]` with `{id, part_type, body, author:{type,
//!    id, name, email, from_ai_agent, is_ai_answer}, attachments[{type, name, url, ...}],
//!    redacted}` [C] (intercom-client `ConversationPart`, `ConversationPartAuthor`); the first
//!    message of `conversation.user.created` is `item.source` (2.x) or
//!    `item.conversation_message` (1.x) [C]/[S].
//!    - Bot and Fin replies arrive as `conversation.operator.replied` **and** inside
//!      `conversation.admin.replied` with `author.type:"bot"` [S] (community thread
//!      <https://community.intercom.com/api-webhooks-23/webhooks-bot-s-replies-in-conversation-admin-replied-topic-14573>):
//!      only `author.type == "admin"` (without the AI-agent flags) is a human.
//!    - Human replies are `part_type:"comment"`; a reply that also assigned the conversation
//!      arrived as `part_type:"assignment"` with a body in zulip's `conversation_admin_replied`
//!      fixture [S], so such parts count too when they carry text ([`ADMIN_REPLY_PART_TYPES`],
//!      **[U]**). Notes (`conversation.admin.noted`, `part_type:"note"`) never do.
//!    - A close is the topic `conversation.admin.closed`, or a part with `part_type:"close"`
//!      in another conversation topic ([`CLOSE_PART_TYPE`], **[U]** for webhooks).
//!    - Bodies: HTML such as `<p>Hi <b>there</b></p>` up to 2.14, plain text for webhooks from
//!      2.15 on [C] (2.15 `conversation_part` model). [`parse`] does not know the pinned
//!      version, so a body is converted from HTML only when it contains a known HTML tag
//!      ([`html_to_text`]).
//!    - Signature: `X-Hub-Signature: sha1=<hex>`, HMAC-SHA1 of the raw body [C]
//!      <https://developers.intercom.com/intercom-api-reference/v1.0/reference/signed-notifications>;
//!      the key is the app's `client_secret` [S] (hookdeck webhook-skills, webhookdb).
//!    - Bodies larger than `webhook_desk::MAX_INBOUND_BYTES` are refused; a notification
//!      carries the conversation with its new parts only, typically a few KiB **[U]**.
//!    - At-least-once delivery: a re-delivery keeps the `id` and counts up
//!      `delivery_attempts` [S]; the exact retry schedule is **[U]**. Answer within 500 ms for
//!      priority delivery [C] <https://developers.intercom.com/docs/webhooks/webhook-notifications>.
//!
//! # How the desk uses them
//!
//! - `open` for a Messenger user (`desk.hosts(channel)`: `key.user` is their conversation):
//!   an internal note with the reason and question, then the assignment to `desk.admin_id` /
//!   `desk.team_id`; the conversation id is returned unchanged.
//! - `open` for anyone else: the contact by e-mail (the `KeyValue` map first, then search, then
//!   create; external id `baton-` + 24 hex digits of SHA-256 over the conversation key and the
//!   e-mail), a conversation "from" that contact whose body is a readable transcript, the
//!   conversation -> contact link (needed by `post`), then the assignment if configured.
//! - `post`: a comment as the contact; `close`: a close part by the bot teammate saying why.
//! - Every completed call (and every step of `open`) is remembered by idempotency key for two
//!   days, so an effect retried after a crash or a 429 does not repeat what already happened.

use crate::outbound::{quote, read_limited, redact_url, status_error, transport_error, Reply};
use crate::records::CallRecords;
use crate::salesiq::{base_url, segment};
use crate::transcript::cut_chars;
use crate::webhook_desk::{ParseError, MAX_INBOUND_BYTES};
use async_trait::async_trait;
use baton_core::agent::{Agent, DeskConfig, IntercomConfig};
use baton_core::effect::HandoffRequest;
use baton_core::model::{CloseReason, ConversationKey, Millis, OutMessage, ServiceStatus, MAX_USER_ID_LEN};
use baton_core::ports::{Clock, DeliveryError, Desk, KeyValue};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::Method;
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

// -------------------------------------------------------------------------------------------
// Constants

/// Header of the webhook signature (`sha1=<hex>`).
pub const SIGNATURE_HEADER: &str = "x-hub-signature";
/// The version header sent on every call.
pub const VERSION_HEADER: &str = "Intercom-Version";
/// Unix seconds at which the rate-limit window resets.
pub const RATE_LIMIT_RESET_HEADER: &str = "x-ratelimit-reset";

pub const TOPIC_PING: &str = "ping";
pub const TOPIC_USER_CREATED: &str = "conversation.user.created";
pub const TOPIC_USER_REPLIED: &str = "conversation.user.replied";
pub const TOPIC_ADMIN_REPLIED: &str = "conversation.admin.replied";
pub const TOPIC_ADMIN_CLOSED: &str = "conversation.admin.closed";
pub const TOPIC_ADMIN_NOTED: &str = "conversation.admin.noted";
pub const TOPIC_ADMIN_ASSIGNED: &str = "conversation.admin.assigned";
pub const TOPIC_OPERATOR_REPLIED: &str = "conversation.operator.replied";

/// `part_type`s of a teammate's part in `conversation.admin.replied` that are a reply to the
/// user when they carry text (`assignment`: a reply that also assigned the conversation) [U].
pub const ADMIN_REPLY_PART_TYPES: &[&str] = &["comment", "assignment"];
/// `part_type` of a part that closed the conversation [U for webhooks].
pub const CLOSE_PART_TYPE: &str = "close";
/// `author.type` of a human teammate.
pub const TEAMMATE_AUTHOR_TYPE: &str = "admin";
/// `author.type`s of the conversation's contact.
pub const CONTACT_AUTHOR_TYPES: &[&str] = &["user", "lead", "contact"];
/// Where the conversation id sits in the answer of `POST /conversations` [U for some versions].
pub const CONVERSATION_ID_PATHS: &[&[&str]] = &[&["conversation_id"], &["conversation", "id"]];
/// What precedes the existing contact's id in a 409 conflict message.
pub const CONFLICT_ID_MARKER: &str = "id=";
/// How many contacts one e-mail search asks for.
pub const SEARCH_PAGE_SIZE: u32 = 10;
/// Longest transcript (first message) of a conversation the hub opens, in characters [U].
pub const MAX_TRANSCRIPT_CHARS: usize = 8000;
/// Longest internal note on a handoff inside Messenger, in characters [U].
pub const MAX_NOTE_CHARS: usize = 2000;
/// Longest message text taken from a notification; longer text is cut (with `…`).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Longest wait taken from `X-RateLimit-Reset` (a clock far off must not park an effect).
pub const MAX_RATE_LIMIT_WAIT_MS: u64 = 5 * 60 * 1000;
/// Answers are read up to this size (a reply answers the whole conversation).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How long e-mail -> contact and conversation -> contact links are kept.
const LINK_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// Longest notification id accepted.
const MAX_NOTIFICATION_ID_BYTES: usize = 256;
/// Longest part id accepted.
const MAX_PART_ID_BYTES: usize = 256;

pub const ME_PATH: &str = "/me";
pub const CONTACTS_PATH: &str = "/contacts";
pub const CONTACTS_SEARCH_PATH: &str = "/contacts/search";
pub const CONVERSATIONS_PATH: &str = "/conversations";

pub fn admin_path(admin_id: &str) -> String {
    format!("/admins/{}", segment(admin_id.trim()))
}
pub fn unarchive_path(contact_id: &str) -> String {
    format!("/contacts/{}/unarchive", segment(contact_id))
}
pub fn conversation_path(conversation_id: &str) -> String {
    format!("/conversations/{}", segment(conversation_id))
}
pub fn reply_path(conversation_id: &str) -> String {
    format!("/conversations/{}/reply", segment(conversation_id))
}
pub fn parts_path(conversation_id: &str) -> String {
    format!("/conversations/{}/parts", segment(conversation_id))
}

// -------------------------------------------------------------------------------------------
// Signature

/// Whether `header` is `sha1=<hex>` of HMAC-SHA1(`client_secret`, `body`), compared in
/// constant time. A missing, malformed or empty header, or an empty secret, is `false`.
pub fn verify_signature(client_secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let secret = client_secret.trim();
    if secret.is_empty() {
        return false;
    }
    let Some(header) = header.map(str::trim) else {
        return false;
    };
    let Some(hex_part) = header.get(..5).filter(|p| p.eq_ignore_ascii_case("sha1=")).and_then(|_| header.get(5..))
    else {
        return false;
    };
    if hex_part.len() != 40 {
        return false;
    }
    let Ok(signature) = hex::decode(hex_part) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

// -------------------------------------------------------------------------------------------
// Webhooks

#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    Ping,
    /// A user (contact) wrote: `conversation.user.created` / `conversation.user.replied` (the
    /// newest user part; HTML turned into text; attachments as `[file: name] url` lines; never
    /// empty: a part without text becomes a placeholder).
    UserMessage {
        conversation_id: String,
        part_id: String,
        contact_id: Option<String>,
        email: Option<String>,
        text: String,
    },
    /// A teammate's reply: `conversation.admin.replied` whose newest part is by an
    /// `author.type == "admin"` with a reply `part_type` (never notes, bot or operator parts).
    /// The hub's own replies come back this way too (see [`IntercomClient::is_own_admin`]).
    AdminReply {
        conversation_id: String,
        part_id: String,
        admin_id: String,
        text: String,
    },
    /// `conversation.admin.closed`, or a close part.
    Closed {
        conversation_id: String,
    },
    /// Anything else, accepted and ignored (notes, bot replies, assignments, snoozes...).
    Other {
        topic: String,
        conversation_id: Option<String>,
        why: String,
    },
}

impl WebhookEvent {
    /// The conversation the event is about.
    pub fn conversation_id(&self) -> Option<&str> {
        match self {
            WebhookEvent::Ping => None,
            WebhookEvent::UserMessage { conversation_id, .. }
            | WebhookEvent::AdminReply { conversation_id, .. }
            | WebhookEvent::Closed { conversation_id } => Some(conversation_id),
            WebhookEvent::Other { conversation_id, .. } => conversation_id.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// `notif_...`: the same for every delivery of one notification (the idempotency key).
    /// Notifications without an id (`ping`) get `derived-` + a hash of their content.
    pub id: String,
    pub event: WebhookEvent,
}

type Object = serde_json::Map<String, Value>;

fn field(field: &'static str, message: impl Into<String>) -> ParseError {
    ParseError::Field { field, message: message.into() }
}

/// Parse one webhook body (verify [`verify_signature`] on the raw bytes first). Errors name
/// the field (`data.item.id: missing`); topics the hub does not act on are `Other`.
pub fn parse(body: &[u8]) -> Result<Notification, ParseError> {
    if body.len() > MAX_INBOUND_BYTES {
        return Err(ParseError::TooLarge);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ParseError::NotObject);
    };
    let topic = match map.get("topic") {
        None | Some(Value::Null) => return Err(field("topic", "missing")),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 128 && !s.chars().any(char::is_control) => {
            s.trim().to_string()
        }
        Some(_) => return Err(field("topic", "must be a non-empty topic name")),
    };
    let item = match map.get("data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(data)) => match data.get("item") {
            None | Some(Value::Null) => None,
            Some(Value::Object(item)) => Some(item),
            Some(_) => return Err(field("data.item", "must be an object")),
        },
        Some(_) => return Err(field("data", "must be an object")),
    };
    let event = if topic == TOPIC_PING {
        WebhookEvent::Ping
    } else if topic.starts_with("conversation.") {
        conversation_event(&topic, item)?
    } else {
        WebhookEvent::Other { topic: topic.clone(), conversation_id: None, why: "not a conversation topic".into() }
    };
    let id = match map.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            let s = s.trim();
            if s.len() > MAX_NOTIFICATION_ID_BYTES || s.chars().any(char::is_control) {
                return Err(field(
                    "id",
                    format!("must be at most {MAX_NOTIFICATION_ID_BYTES} bytes without control characters"),
                ));
            }
            s.to_string()
        }
        None | Some(Value::Null) => derived_id(&topic, &event, &map),
        Some(Value::String(_)) => derived_id(&topic, &event, &map),
        Some(_) => return Err(field("id", "must be a string")),
    };
    Ok(Notification { id, event })
}

/// `derived-` + 32 hex digits of SHA-256 over what identifies a notification without an id.
fn derived_id(topic: &str, event: &WebhookEvent, map: &Object) -> String {
    let part = match event {
        WebhookEvent::UserMessage { part_id, .. } | WebhookEvent::AdminReply { part_id, .. } => Some(part_id.as_str()),
        _ => None,
    };
    let canonical =
        json!([topic, event.conversation_id(), part, map.get("created_at"), map.get("first_sent_at")]).to_string();
    format!("derived-{}", &hex::encode(Sha256::digest(canonical.as_bytes()))[..32])
}

fn conversation_event(topic: &str, item: Option<&Object>) -> Result<WebhookEvent, ParseError> {
    let acted_on = matches!(topic, TOPIC_USER_CREATED | TOPIC_USER_REPLIED | TOPIC_ADMIN_REPLIED | TOPIC_ADMIN_CLOSED);
    let Some(item) = item else {
        if acted_on {
            return Err(field("data.item", "missing"));
        }
        return Ok(other(topic, None, "no conversation in the notification"));
    };
    let conversation_id = match conversation_id(item) {
        Ok(id) => id,
        Err(e) if acted_on => return Err(e),
        Err(_) => return Ok(other(topic, None, "no conversation id in the notification")),
    };
    let parts = parts(item);
    let is_close = |p: &&Object| str_field(p, "part_type") == Some(CLOSE_PART_TYPE);
    let newest = parts.last().copied();
    // In `admin.replied` a reply next to a close part still counts (the close comes as its own
    // `conversation.admin.closed` [U]); elsewhere a newest close part is a close.
    let close_wins = match topic {
        TOPIC_ADMIN_CLOSED => true,
        TOPIC_ADMIN_REPLIED => !parts.is_empty() && parts.iter().all(is_close),
        TOPIC_USER_CREATED | TOPIC_USER_REPLIED | TOPIC_ADMIN_NOTED => false,
        _ => newest.as_ref().is_some_and(is_close),
    };
    if close_wins {
        return Ok(WebhookEvent::Closed { conversation_id });
    }
    match topic {
        TOPIC_USER_CREATED => {
            let source =
                ["source", "conversation_message"].iter().find_map(|k| item.get(*k).and_then(Value::as_object));
            let message = source.or_else(|| parts.iter().rev().copied().find(|p| is_contact_part(p)));
            let Some(message) = message else {
                return Ok(other(topic, Some(conversation_id), "no message by the user in the notification"));
            };
            user_message(conversation_id, item, message, source.is_some())
        }
        TOPIC_USER_REPLIED => match parts.iter().rev().copied().find(|p| is_contact_part(p)) {
            Some(part) => user_message(conversation_id, item, part, false),
            None => Ok(other(topic, Some(conversation_id), "no part by the user in the notification")),
        },
        TOPIC_ADMIN_REPLIED => {
            let Some(part) = parts.iter().rev().copied().find(|p| !is_close(p)) else {
                return Ok(other(topic, Some(conversation_id), "no conversation part in the notification"));
            };
            admin_reply(topic, conversation_id, part)
        }
        TOPIC_ADMIN_NOTED => Ok(other(topic, Some(conversation_id), "an internal note, never relayed")),
        TOPIC_ADMIN_ASSIGNED => Ok(other(topic, Some(conversation_id), "an assignment")),
        TOPIC_OPERATOR_REPLIED => Ok(other(topic, Some(conversation_id), "a bot's reply")),
        _ => Ok(other(topic, Some(conversation_id), "a topic the hub does not act on")),
    }
}

fn other(topic: &str, conversation_id: Option<String>, why: &str) -> WebhookEvent {
    WebhookEvent::Other { topic: topic.to_string(), conversation_id, why: why.to_string() }
}

fn conversation_id(item: &Object) -> Result<String, ParseError> {
    const F: &str = "data.item.id";
    let id = id_value(item.get("id")).ok_or_else(|| field(F, "missing (a string or integer conversation id)"))?;
    if id.len() > MAX_USER_ID_LEN || id.chars().any(char::is_control) {
        return Err(field(F, format!("must be at most {MAX_USER_ID_LEN} bytes without control characters")));
    }
    Ok(id)
}

/// The conversation parts in the notification, oldest first (by `created_at`, then order).
fn parts(item: &Object) -> Vec<&Object> {
    let list = item
        .get("conversation_parts")
        .and_then(|p| p.get("conversation_parts"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut indexed: Vec<(i64, usize, &Object)> = list
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p.get("created_at").and_then(Value::as_i64).unwrap_or(0), i, p))
        .collect();
    indexed.sort_by_key(|(at, i, _)| (*at, *i));
    indexed.into_iter().map(|(_, _, p)| p).collect()
}

fn author(part: &Object) -> Option<&Object> {
    part.get("author").and_then(Value::as_object)
}

fn author_type(part: &Object) -> Option<&str> {
    author(part).and_then(|a| a.get("type")).and_then(Value::as_str).map(str::trim)
}

fn is_contact_part(part: &Object) -> bool {
    author_type(part).is_some_and(|t| CONTACT_AUTHOR_TYPES.contains(&t))
}

fn str_field<'a>(o: &'a Object, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// A string or integer id as a string; anything else is absent.
fn id_value(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn part_id(part: &Object, f: &'static str) -> Result<String, ParseError> {
    let id = id_value(part.get("id")).ok_or_else(|| field(f, "missing (a string or integer part id)"))?;
    if id.len() > MAX_PART_ID_BYTES || id.chars().any(char::is_control) {
        return Err(field(f, format!("must be at most {MAX_PART_ID_BYTES} bytes without control characters")));
    }
    Ok(id)
}

fn valid_email(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|e| !e.is_empty() && e.len() <= 254 && e.contains('@') && !e.chars().any(char::is_control))
        .map(str::to_string)
}

fn user_message(
    conversation_id: String,
    item: &Object,
    part: &Object,
    is_source: bool,
) -> Result<WebhookEvent, ParseError> {
    let part_id = if is_source {
        // The first message's id is only a label here; the notification id is the key.
        part_id(part, "data.item.source.id").unwrap_or_else(|_| format!("source-{conversation_id}"))
    } else {
        part_id(part, "data.item.conversation_parts.conversation_parts[].id")?
    };
    let author = author(part);
    let is_contact = is_contact_part(part);
    let contact_id = author
        .filter(|_| is_contact)
        .and_then(|a| id_value(a.get("id")))
        .or_else(|| {
            item.get("contacts")
                .and_then(|c| c.get("contacts"))
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(|c| id_value(c.get("id")))
        })
        .or_else(|| item.get("user").and_then(|u| id_value(u.get("id"))));
    let email = valid_email(author.filter(|_| is_contact).and_then(|a| a.get("email")).and_then(Value::as_str))
        .or_else(|| {
            valid_email(
                item.get("source")
                    .and_then(|s| s.get("author"))
                    .filter(|a| {
                        a.get("type").and_then(Value::as_str).is_some_and(|t| CONTACT_AUTHOR_TYPES.contains(&t))
                    })
                    .and_then(|a| a.get("email"))
                    .and_then(Value::as_str),
            )
        })
        .or_else(|| valid_email(item.get("user").and_then(|u| u.get("email")).and_then(Value::as_str)));
    Ok(WebhookEvent::UserMessage { conversation_id, part_id, contact_id, email, text: part_text(part) })
}

fn admin_reply(topic: &str, conversation_id: String, part: &Object) -> Result<WebhookEvent, ParseError> {
    let part_type = str_field(part, "part_type").unwrap_or("");
    match author_type(part) {
        Some(TEAMMATE_AUTHOR_TYPE) => {}
        Some(t) if !t.is_empty() => {
            return Ok(other(topic, Some(conversation_id), &format!("a part by a {} (not a teammate)", cut(t, 32))))
        }
        _ => return Ok(other(topic, Some(conversation_id), "a part without an author type")),
    }
    let ai = author(part).is_some_and(|a| {
        a.get("from_ai_agent").and_then(Value::as_bool) == Some(true)
            || a.get("is_ai_answer").and_then(Value::as_bool) == Some(true)
    });
    if ai {
        return Ok(other(topic, Some(conversation_id), "an AI agent's part"));
    }
    if !ADMIN_REPLY_PART_TYPES.contains(&part_type) {
        let what = if part_type.is_empty() { "untyped".to_string() } else { cut(part_type, 64) };
        return Ok(other(topic, Some(conversation_id), &format!("a {what} part, not a reply")));
    }
    let has_content = str_field(part, "body").is_some_and(|b| !html_to_text(b).is_empty())
        || part.get("attachments").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if part_type != "comment" && !has_content {
        return Ok(other(topic, Some(conversation_id), &format!("a {part_type} part without text")));
    }
    let part_id = part_id(part, "data.item.conversation_parts.conversation_parts[].id")?;
    let admin_id = author(part).and_then(|a| id_value(a.get("id"))).ok_or_else(|| {
        field("data.item.conversation_parts.conversation_parts[].author.id", "missing (the teammate's id)")
    })?;
    Ok(WebhookEvent::AdminReply { conversation_id, part_id, admin_id, text: part_text(part) })
}

/// The text of a part: the body as text plus one `[file: name] url` line per attachment; a
/// part with neither becomes a placeholder, so nothing is dropped silently.
fn part_text(part: &Object) -> String {
    if part.get("redacted").and_then(Value::as_bool) == Some(true) {
        return "[redacted message]".into();
    }
    let mut lines = Vec::new();
    if let Some(body) = part.get("body").and_then(Value::as_str) {
        let text = html_to_text(body);
        if !text.is_empty() {
            lines.push(text);
        }
    }
    for a in part.get("attachments").and_then(Value::as_array).into_iter().flatten() {
        let Some(a) = a.as_object() else { continue };
        let name = ["name", "file_name", "filename"].iter().find_map(|k| str_field(a, k)).map(|n| cut(n, 200));
        let url = str_field(a, "url").filter(|u| u.starts_with("https://") || u.starts_with("http://"));
        let line = match (name, url) {
            (Some(n), Some(u)) => format!("[file: {n}] {}", cut(u, 2000)),
            (Some(n), None) => format!("[file: {n}]"),
            (None, Some(u)) => format!("[file] {}", cut(u, 2000)),
            (None, None) => "[file]".into(),
        };
        lines.push(line);
    }
    if lines.is_empty() {
        return match str_field(part, "part_type") {
            Some(t) if t != "comment" => format!("[{} without text]", cut(t, 64)),
            _ => "[message without text]".into(),
        };
    }
    cut(&lines.join("\n"), MAX_TEXT_BYTES)
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Tags whose presence marks a body as HTML (2.14 and earlier); anything else is plain text
/// (2.15 and later) and is only trimmed, so `a < b` or `<3` survive.
const HTML_MARKERS: &[&str] = &[
    "<p>",
    "<p ",
    "</p>",
    "<br",
    "<div",
    "</div>",
    "<b>",
    "</b>",
    "<i>",
    "</i>",
    "<a ",
    "</a>",
    "<img",
    "<ul",
    "<ol",
    "<li",
    "<span",
    "<strong",
    "<em>",
    "<h1",
    "<h2",
    "<h3",
    "<pre",
    "<code",
    "<blockquote",
    "<table",
    "<u>",
];

/// Tags after which a line ends.
const BLOCK_TAGS: &[&str] =
    &["p", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "tr", "table"];

/// A message body as plain text: HTML bodies lose their tags (blocks and `<br>` become line
/// breaks, list items `• `, links `text (url)`, images `[image] url`) and entities are decoded;
/// plain bodies are only trimmed. Runs of blank lines shrink to one.
pub fn html_to_text(body: &str) -> String {
    let lower = body.to_ascii_lowercase();
    if !HTML_MARKERS.iter().any(|m| lower.contains(m)) {
        return body.trim().to_string();
    }
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    let mut link: Option<(usize, String)> = None;
    while let Some(lt) = rest.find('<') {
        out.push_str(&decode_entities(&rest[..lt]));
        let after = &rest[lt..];
        let Some(gt) = after.find('>') else {
            out.push_str(&decode_entities(after));
            rest = "";
            break;
        };
        let tag = &after[1..gt];
        rest = &after[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if !closing && (name == "script" || name == "style") {
            let end = format!("</{name}");
            match rest.to_ascii_lowercase().find(&end) {
                Some(i) => rest = rest[i..].find('>').map(|j| &rest[i + j + 1..]).unwrap_or(""),
                None => rest = "",
            }
            continue;
        }
        match (name.as_str(), closing) {
            ("br", _) => out.push('\n'),
            ("li", false) => {
                ensure_line_start(&mut out);
                out.push_str("• ");
            }
            ("img", false) => {
                if let Some(src) = attribute(tag, "src") {
                    out.push_str(&format!("[image] {src}"));
                }
            }
            ("a", false) => link = attribute(tag, "href").map(|h| (out.len(), h)),
            ("a", true) => {
                if let Some((start, href)) = link.take() {
                    let text = out.get(start..).unwrap_or("").trim().to_string();
                    if !text.is_empty() && text != href {
                        out.push_str(&format!(" ({href})"));
                    } else if text.is_empty() {
                        out.push_str(&href);
                    }
                }
            }
            (n, _) if BLOCK_TAGS.contains(&n) => ensure_line_start(&mut out),
            _ => {}
        }
    }
    out.push_str(&decode_entities(rest));
    tidy_lines(&out)
}

fn ensure_line_start(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// The value of `name="..."` (or single-quoted, or bare) inside a tag.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before_ok = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = tag[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value = rest[1..].trim_start();
        let v = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
            _ => value.split(|c: char| c.is_whitespace() || c == '>').next().unwrap_or(""),
        };
        let v = decode_entities(v.trim());
        return (!v.is_empty()).then_some(v);
    }
    None
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let end = after.find(';').filter(|&e| e <= 10);
        let decoded = end.and_then(|e| {
            let name = &after[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" | "#160" => Some(' '),
                _ => {
                    let code = if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        name.strip_prefix('#').and_then(|d| d.parse().ok())
                    };
                    code.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &after[e + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Trailing spaces off every line, at most one blank line in a row, trimmed.
fn tidy_lines(s: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for line in s.lines() {
        let line = line.trim_end().replace('\u{a0}', " ");
        let line = line.trim_start_matches(' ').to_string();
        if line.is_empty() && out.last().is_none_or(|l| l.is_empty()) {
            continue;
        }
        out.push(line);
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out.join("\n")
}

// -------------------------------------------------------------------------------------------
// REST client

fn config(agent: &Agent) -> Result<&IntercomConfig, DeliveryError> {
    agent.intercom.as_ref().ok_or_else(|| {
        DeliveryError::permanent(format!("agent {} has no [intercom] section (Intercom workspace and app)", agent.id))
    })
}

/// A short hash for record names (ids and e-mail addresses from outside).
fn short_hash(parts: &[&str]) -> String {
    crate::records::hash(parts, 32)
}

/// One HTTP answer.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    rate_reset: Option<String>,
    body: Vec<u8>,
    what: String,
}

/// A contact the hub writes as.
#[derive(Debug, Clone, PartialEq)]
struct Contact {
    id: String,
    /// `user` or `lead` (the `from.type` of a new conversation).
    role: &'static str,
}

impl Contact {
    fn encode(&self) -> String {
        format!("{}:{}", self.role, self.id)
    }

    fn decode(s: &str) -> Option<Contact> {
        let (role, id) = s.split_once(':')?;
        let role = if role == "lead" { "lead" } else { "user" };
        (!id.trim().is_empty()).then(|| Contact { id: id.trim().to_string(), role })
    }
}

/// The Intercom REST client. Cheap to clone; one per process.
#[derive(Clone)]
pub struct IntercomClient {
    http: reqwest::Client,
    timeout: Duration,
    kv: Arc<dyn KeyValue>,
    clock: Arc<dyn Clock>,
    records: CallRecords,
}

impl IntercomClient {
    pub fn new(http: reqwest::Client, timeout: Duration, kv: Arc<dyn KeyValue>, clock: Arc<dyn Clock>) -> Self {
        let records = CallRecords::new("intercom", "Intercom", kv.clone(), clock.clone());
        IntercomClient { http, timeout, kv, clock, records }
    }

    /// The AI's answer in a Messenger conversation, as the bot teammate (`bot_admin_id`):
    /// `POST /conversations/{id}/reply` with a comment. Buttons are listed as `• label` lines.
    /// Idempotent across retries: `idempotency_key` is remembered for two days once done.
    pub async fn reply_as_bot(
        &self,
        agent: &Agent,
        conversation_id: &str,
        message: &OutMessage,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let cfg = config(agent)?;
        if self.records.done(agent, "say", idempotency_key).await.is_some() {
            return Ok(());
        }
        let text = render(message);
        if text.trim().is_empty() {
            return Err(DeliveryError::permanent(format!("agent {}: empty message for Intercom", agent.id)));
        }
        let body = admin_comment_body(cfg, &text);
        self.call(agent, cfg, Method::POST, &reply_path(conversation_id), Some(&body)).await?;
        self.records.mark_done(agent, "say", idempotency_key, "1").await;
        Ok(())
    }

    /// Whether an `AdminReply` is the hub's own (its author is `intercom.bot_admin_id`).
    pub fn is_own_admin(&self, agent: &Agent, admin_id: &str) -> bool {
        agent.intercom.as_ref().map(|c| c.bot_admin_id.trim()).is_some_and(|b| !b.is_empty() && b == admin_id.trim())
    }

    /// One call; the answer's JSON (`Null` when it has none or it is not JSON).
    async fn call(
        &self,
        agent: &Agent,
        cfg: &IntercomConfig,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DeliveryError> {
        let answer = self.send(agent, cfg, method, path, body).await?;
        classify(&answer, cfg.access_token.expose(), self.clock.now())
    }

    /// Send one request; only transport and configuration failures are errors here.
    async fn send(
        &self,
        agent: &Agent,
        cfg: &IntercomConfig,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, DeliveryError> {
        let base = base_url(&cfg.api_base, "intercom.api_base", &agent.id)?;
        let url = format!("{base}{path}");
        let what = format!("{method} {}", redact_url(&url));
        let token = cfg.access_token.expose().trim();
        if token.is_empty() {
            return Err(DeliveryError::Unauthorized {
                message: format!("{what}: agent {} has an empty intercom.access_token", agent.id),
            });
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            DeliveryError::permanent(format!("{what}: intercom.access_token is not a valid header value"))
        })?;
        auth.set_sensitive(true);
        let version = HeaderValue::from_str(cfg.api_version.trim())
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| DeliveryError::permanent(format!("{what}: intercom.api_version is not a valid version")))?;
        let mut req = self
            .http
            .request(method, &url)
            .timeout(self.timeout)
            .header(AUTHORIZATION, auth)
            .header(VERSION_HEADER, version)
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| transport_error(&what, self.timeout, e))?;
        let status = resp.status().as_u16();
        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let retry_after = header(RETRY_AFTER.as_str());
        let rate_reset = header(RATE_LIMIT_RESET_HEADER);
        let body = read_limited(resp, MAX_ANSWER_BYTES).await;
        tracing::debug!(%what, status, "Intercom answered");
        Ok(Answer { status, retry_after, rate_reset, body, what })
    }

    async fn remember(&self, agent: &Agent, name: &str, value: &str) {
        if let Err(e) = self.kv.put(name, value, Millis(self.clock.now().0 + LINK_TTL_MS)).await {
            tracing::warn!(agent = %agent.id, error = %e, "cannot remember an Intercom contact link");
        }
    }

    async fn recall(&self, agent: &Agent, name: &str) -> Option<String> {
        match self.kv.get(name, self.clock.now()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(agent = %agent.id, error = %e, "cannot look up an Intercom contact link");
                None
            }
        }
    }

    /// The contact for `email` (or, without one, for the conversation key's external id): the
    /// remembered link when `use_map`, else a search, else a new contact (a 409 names the
    /// existing one). Returns the contact and whether it came from the map.
    async fn contact_for(
        &self,
        agent: &Agent,
        cfg: &IntercomConfig,
        key: &ConversationKey,
        email: &str,
        use_map: bool,
    ) -> Result<(Contact, bool), DeliveryError> {
        let email = email.trim();
        let external_id = contact_external_id(key, email);
        let map_name = contact_link_name(&agent.id, email, &external_id);
        if use_map {
            if let Some(contact) = self.recall(agent, &map_name).await.as_deref().and_then(Contact::decode) {
                return Ok((contact, true));
            }
        }
        let (search_field, value) =
            if email.is_empty() { ("external_id", external_id.as_str()) } else { ("email", email) };
        let query = json!({
            "query": {"field": search_field, "operator": "=", "value": value},
            "pagination": {"per_page": SEARCH_PAGE_SIZE},
        });
        let found = self.call(agent, cfg, Method::POST, CONTACTS_SEARCH_PATH, Some(&query)).await?;
        if let Some(contact) = pick_contact(&found, search_field, value) {
            self.remember(agent, &map_name, &contact.encode()).await;
            return Ok((contact, false));
        }
        let mut create = json!({"role": "user", "external_id": external_id});
        if !email.is_empty() {
            create["email"] = json!(email);
        }
        let answer = self.send(agent, cfg, Method::POST, CONTACTS_PATH, Some(&create)).await?;
        let contact = if answer.status == 409 {
            let json: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let message = first_error(&json).1.unwrap_or_default();
            let Some(id) = conflict_id(&message) else {
                return Err(classify(&answer, cfg.access_token.expose(), self.clock.now())
                    .err()
                    .unwrap_or_else(|| DeliveryError::permanent(format!("{} answered HTTP 409", answer.what))));
            };
            if message.to_ascii_lowercase().contains("archived") {
                self.call(agent, cfg, Method::POST, &unarchive_path(&id), None).await?;
            }
            Contact { id, role: "user" }
        } else {
            let created = classify(&answer, cfg.access_token.expose(), self.clock.now())?;
            let id = id_value(created.get("id")).ok_or_else(|| {
                DeliveryError::permanent(format!("{}: Intercom answered without a contact id", answer.what))
            })?;
            let role = if created.get("role").and_then(Value::as_str) == Some("lead") { "lead" } else { "user" };
            Contact { id, role }
        };
        self.remember(agent, &map_name, &contact.encode()).await;
        Ok((contact, false))
    }

    /// A new conversation from the user's contact whose first message is the transcript; a
    /// remembered contact that Intercom no longer knows (merged, deleted) is looked up again.
    async fn start_conversation(
        &self,
        agent: &Agent,
        cfg: &IntercomConfig,
        key: &ConversationKey,
        request: &HandoffRequest,
    ) -> Result<String, DeliveryError> {
        let transcript = transcript(key, request);
        let email = own_email(agent, request);
        let mut use_map = true;
        loop {
            let (contact, from_map) = self.contact_for(agent, cfg, key, email, use_map).await?;
            let body = json!({"from": {"type": contact.role, "id": contact.id}, "body": transcript});
            match self.call(agent, cfg, Method::POST, CONVERSATIONS_PATH, Some(&body)).await {
                Ok(answer) => {
                    let id = conversation_id_in(&answer).ok_or_else(|| {
                        DeliveryError::permanent(format!(
                            "POST {}{CONVERSATIONS_PATH}: Intercom answered without a conversation_id",
                            redact_url(cfg.api_base.trim().trim_end_matches('/'))
                        ))
                    })?;
                    self.remember(agent, &conversation_link_name(&agent.id, &id), &contact.id).await;
                    return Ok(id);
                }
                Err(DeliveryError::Permanent { message }) if from_map => {
                    tracing::info!(agent = %agent.id, %message, "a remembered Intercom contact was refused; looking it up again");
                    let name = contact_link_name(&agent.id, email, &contact_external_id(key, email));
                    if let Err(e) = self.kv.delete(&name).await {
                        tracing::warn!(agent = %agent.id, error = %e, "cannot forget an Intercom contact link");
                    }
                    use_map = false;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The contact the hub writes as in `conversation_id`: the link recorded by `open`, else
    /// the conversation's first contact.
    async fn conversation_contact(
        &self,
        agent: &Agent,
        cfg: &IntercomConfig,
        conversation_id: &str,
    ) -> Result<String, DeliveryError> {
        let name = conversation_link_name(&agent.id, conversation_id);
        if let Some(id) = self.recall(agent, &name).await.filter(|s| !s.trim().is_empty()) {
            return Ok(id);
        }
        let conversation = self.call(agent, cfg, Method::GET, &conversation_path(conversation_id), None).await?;
        let id = conversation
            .get("contacts")
            .and_then(|c| c.get("contacts"))
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|c| id_value(c.get("id")))
            .ok_or_else(|| {
                DeliveryError::permanent(format!(
                    "agent {}: Intercom conversation {} has no contact to write as",
                    agent.id,
                    quote(conversation_id)
                ))
            })?;
        self.remember(agent, &name, &id).await;
        Ok(id)
    }

    /// Assign the conversation as configured (each assignment once per idempotency key). In a
    /// Messenger conversation the bot teammate lets go of it: when no teammate is configured
    /// and the bot (or nobody known) holds the admin assignment, the admin is unassigned.
    async fn assign(
        &self,
        agent: &Agent,
        cfg: &IntercomConfig,
        conversation_id: &str,
        target: &AssignTarget<'_>,
        in_messenger: bool,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let mut steps: Vec<(&str, &str)> = Vec::new();
        if let Some(admin) = target.admin {
            steps.push(("admin", admin));
        }
        if let Some(team) = target.team {
            steps.push(("team", team));
        }
        let path = parts_path(conversation_id);
        let mut release_bot = in_messenger && target.admin.is_none() && target.team.is_none();
        for (kind, id) in steps {
            let step = format!("assign:{kind}:{id}");
            if self.records.done(agent, &step, idempotency_key).await.is_some() {
                continue;
            }
            let answer = self.call(agent, cfg, Method::POST, &path, Some(&assignment_body(cfg, kind, id))).await?;
            if in_messenger && kind == "team" && target.admin.is_none() {
                let holder = id_value(answer.get("admin_assignee_id"));
                release_bot = holder.as_deref().is_some_and(|h| h == cfg.bot_admin_id.trim());
            }
            self.records.mark_done(agent, &step, idempotency_key, "1").await;
        }
        if release_bot && self.records.done(agent, "assign:admin:0", idempotency_key).await.is_none() {
            self.call(agent, cfg, Method::POST, &path, Some(&assignment_body(cfg, "admin", "0"))).await?;
            self.records.mark_done(agent, "assign:admin:0", idempotency_key, "1").await;
        }
        Ok(())
    }
}

/// Who takes a handed-over conversation (`desk.admin_id`, `desk.team_id`).
struct AssignTarget<'a> {
    admin: Option<&'a str>,
    team: Option<&'a str>,
}

fn desk_target(agent: &Agent) -> Result<AssignTarget<'_>, DeliveryError> {
    fn clean(s: &Option<String>) -> Option<&str> {
        s.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    match &agent.desk {
        DeskConfig::Intercom { team_id, admin_id } => Ok(AssignTarget { admin: clean(admin_id), team: clean(team_id) }),
        _ => Err(DeliveryError::permanent(format!("agent {} does not use the Intercom desk (desk.kind)", agent.id))),
    }
}

/// The user's own e-mail address, or "" when the request carries the agent's default address
/// (channels without e-mail): every such user would otherwise become one Intercom contact.
fn own_email<'a>(agent: &Agent, request: &'a HandoffRequest) -> &'a str {
    let email = request.email.trim();
    if email.eq_ignore_ascii_case(agent.policy.default_email.trim()) {
        ""
    } else {
        email
    }
}

/// A stable external id for the contact of one conversation key and e-mail: `baton-` + 24 hex.
pub fn contact_external_id(key: &ConversationKey, email: &str) -> String {
    let canonical = format!("{key}\0{}", email.trim().to_lowercase());
    format!("baton-{}", &hex::encode(Sha256::digest(canonical.as_bytes()))[..24])
}

fn contact_link_name(agent_id: &str, email: &str, external_id: &str) -> String {
    let email = email.trim().to_lowercase();
    let subject = if email.is_empty() { format!("ext:{external_id}") } else { format!("email:{email}") };
    format!("intercom:contact:{agent_id}:{}", short_hash(&[&subject]))
}

fn conversation_link_name(agent_id: &str, conversation_id: &str) -> String {
    format!("intercom:conversation:{agent_id}:{}", short_hash(&[conversation_id.trim()]))
}

/// The best match in a search answer: a `user` before a `lead`, only exact (case-insensitive)
/// matches of the searched field.
fn pick_contact(answer: &Value, search_field: &str, value: &str) -> Option<Contact> {
    let data = answer.get("data")?.as_array()?;
    let matching = |c: &&Value| {
        c.get(search_field).and_then(Value::as_str).is_some_and(|v| v.trim().eq_ignore_ascii_case(value.trim()))
    };
    let candidates: Vec<&Value> = data.iter().filter(matching).collect();
    let role = |c: &Value| c.get("role").and_then(Value::as_str).unwrap_or("user").to_string();
    let best = candidates.iter().find(|c| role(c) == "user").or_else(|| candidates.first())?;
    let id = id_value(best.get("id"))?;
    Some(Contact { id, role: if role(best) == "lead" { "lead" } else { "user" } })
}

/// The existing contact's id in a 409 message (`... already exists with id=<id>`).
fn conflict_id(message: &str) -> Option<String> {
    let at = message.rfind(CONFLICT_ID_MARKER)? + CONFLICT_ID_MARKER.len();
    let id: String =
        message[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    (!id.is_empty()).then_some(id)
}

fn conversation_id_in(answer: &Value) -> Option<String> {
    if let Some(id) = CONVERSATION_ID_PATHS.iter().find_map(|p| p.iter().try_fold(answer, |v, k| v.get(*k))) {
        if let Some(id) = id_value(Some(id)) {
            return Some(id);
        }
    }
    // Some versions may answer the Conversation itself.
    (answer.get("type").and_then(Value::as_str) == Some("conversation")).then(|| id_value(answer.get("id"))).flatten()
}

/// `code` and `message` of the first error of an `error.list` (or a flat error).
fn first_error(json: &Value) -> (Option<String>, Option<String>) {
    let first = json.get("errors").and_then(Value::as_array).and_then(|a| a.first()).unwrap_or(json);
    let text =
        |k: &str| first.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    (text("code"), text("message"))
}

/// How long to wait after a 429: until `X-RateLimit-Reset` (unix seconds; at least 1 s), else
/// `Retry-After`.
fn rate_limit_wait_ms(rate_reset: Option<&str>, retry_after: Option<&str>, now: Millis) -> Option<u64> {
    if let Some(reset) = rate_reset.and_then(|r| r.trim().parse::<i64>().ok()) {
        let wait = reset.saturating_mul(1000).saturating_sub(now.0).max(1000);
        return Some((wait as u64).min(MAX_RATE_LIMIT_WAIT_MS));
    }
    crate::outbound::retry_after_ms(retry_after).map(|ms| ms.min(MAX_RATE_LIMIT_WAIT_MS))
}

/// Map an answer to the outcome of the call: 2xx is the JSON (`Null` if none); 429 waits for
/// the rate-limit window; 401/403 are credential failures; 5xx are retried; other statuses are
/// permanent and quote Intercom's first error. The token never appears in the message.
fn classify(answer: &Answer, token: &str, now: Millis) -> Result<Value, DeliveryError> {
    let json: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if (200..300).contains(&answer.status) {
        return Ok(json);
    }
    let (code, message) = first_error(&json);
    let mut detail = match (code, message) {
        (Some(c), Some(m)) => format!(": Intercom error {}: {}", quote(&c), quote(&m)),
        (Some(c), None) => format!(": Intercom error {}", quote(&c)),
        (None, Some(m)) => format!(": {}", quote(&m)),
        (None, None) => String::new(),
    };
    if matches!(answer.status, 401 | 403) {
        detail.push_str(
            " (check intercom.access_token, its permissions and that intercom.api_base is the workspace's region)",
        );
    }
    let detail = scrub(&detail, token);
    if answer.status == 429 {
        return Err(DeliveryError::Retryable {
            message: format!("{} answered HTTP 429{detail}", answer.what),
            retry_after_ms: rate_limit_wait_ms(answer.rate_reset.as_deref(), answer.retry_after.as_deref(), now),
        });
    }
    let reply = Reply {
        status: answer.status,
        retry_after: answer.retry_after.clone(),
        body: Vec::new(),
        what: answer.what.clone(),
    };
    Err(status_error(&reply, &detail))
}

/// `s` without any occurrence of the token (a last guard: Intercom never echoes it).
fn scrub(s: &str, token: &str) -> String {
    let token = token.trim();
    if token.len() < 6 {
        return s.to_string();
    }
    s.replace(token, "***")
}

/// Text plus the labels of buttons the text does not already list, one per line.
fn render(message: &OutMessage) -> String {
    let mut text = message.text.clone();
    for b in &message.buttons {
        let label = b.label.trim();
        if !label.is_empty() && !message.text.contains(label) {
            text.push_str("\n• ");
            text.push_str(label);
        }
    }
    text
}

fn admin_comment_body(cfg: &IntercomConfig, text: &str) -> Value {
    json!({"message_type": "comment", "type": "admin", "admin_id": cfg.bot_admin_id.trim(), "body": text})
}

/// An internal note by the bot teammate.
pub fn note_body(cfg: &IntercomConfig, text: &str) -> Value {
    json!({"message_type": "note", "type": "admin", "admin_id": cfg.bot_admin_id.trim(), "body": text})
}

/// An assignment to `kind` (`admin` or `team`) `assignee_id`, performed by the bot teammate;
/// without a body (an assignment's body may be shown to the user).
pub fn assignment_body(cfg: &IntercomConfig, kind: &str, assignee_id: &str) -> Value {
    json!({
        "message_type": "assignment",
        "type": kind,
        "admin_id": cfg.bot_admin_id.trim(),
        "assignee_id": assignee_id.trim(),
    })
}

/// A close by the bot teammate with a line saying why.
pub fn close_body(cfg: &IntercomConfig, reason: CloseReason) -> Value {
    json!({"message_type": "close", "type": "admin", "admin_id": cfg.bot_admin_id.trim(), "body": close_note(reason)})
}

/// A comment by the conversation's contact.
pub fn contact_comment_body(contact_id: &str, text: &str) -> Value {
    json!({"message_type": "comment", "type": "user", "intercom_user_id": contact_id, "body": text})
}

/// Why the hub closes a conversation.
pub fn close_note(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::UserClosed => "The user ended the chat.",
        CloseReason::Timeout => "The chat timed out.",
    }
}

/// The first message of a conversation the hub opens for a user of another channel: reason,
/// the most recent earlier messages that fit in [`MAX_TRANSCRIPT_CHARS`], the question, the
/// e-mail address and the channel. Plain text.
pub fn transcript(key: &ConversationKey, request: &HandoffRequest) -> String {
    let style = crate::transcript::Style {
        intro: "The AI assistant handed this conversation over to a human.",
        bot: "Assistant",
        max_chars: MAX_TRANSCRIPT_CHARS,
        question_chars: 2000,
        line_chars: 1000,
        no_email: "",
    };
    crate::transcript::transcript(key, request, &style)
}

/// The internal note on a handoff inside a Messenger conversation.
pub fn handoff_note(request: &HandoffRequest) -> String {
    cut_chars(
        &format!(
            "Handed over by the AI assistant.\nReason: {}\nQuestion: {}",
            request.reason.trim(),
            request.question.trim()
        ),
        MAX_NOTE_CHARS,
    )
}

// -------------------------------------------------------------------------------------------
// Desk

/// The `Desk` port for `DeskConfig::Intercom`.
#[derive(Clone)]
pub struct IntercomDesk {
    client: IntercomClient,
}

impl IntercomDesk {
    pub fn new(client: IntercomClient) -> Self {
        IntercomDesk { client }
    }

    pub fn client(&self) -> &IntercomClient {
        &self.client
    }
}

#[async_trait]
impl Desk for IntercomDesk {
    /// A Messenger user (`desk.hosts(channel)`: `key.user` is their conversation) is handed
    /// over inside that conversation (internal note, assignment); anyone else gets a new
    /// conversation as their contact, assigned when a teammate or team is configured.
    async fn open(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError> {
        let cfg = config(agent)?;
        let target = desk_target(agent)?;
        let c = &self.client;
        if let Some(id) = c.records.done(agent, "open", idempotency_key).await {
            return Ok(id);
        }
        let id = if agent.desk.hosts(key.channel) {
            let id = key.user.clone();
            if c.records.done(agent, "open-note", idempotency_key).await.is_none() {
                let body = note_body(cfg, &handoff_note(request));
                c.call(agent, cfg, Method::POST, &reply_path(&id), Some(&body)).await?;
                c.records.mark_done(agent, "open-note", idempotency_key, "1").await;
            }
            c.assign(agent, cfg, &id, &target, true, idempotency_key).await?;
            id
        } else {
            let id = match c.records.done(agent, "open-conversation", idempotency_key).await {
                Some(id) => id,
                None => {
                    let id = c.start_conversation(agent, cfg, key, request).await?;
                    c.records.mark_done(agent, "open-conversation", idempotency_key, &id).await;
                    id
                }
            };
            c.assign(agent, cfg, &id, &target, false, idempotency_key).await?;
            id
        };
        c.records.mark_done(agent, "open", idempotency_key, &id).await;
        Ok(id)
    }

    /// The user's next message, as their contact. Meant for conversations the hub opened: in
    /// a Messenger conversation the user writes there directly.
    async fn post(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        text: &str,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let cfg = config(agent)?;
        let c = &self.client;
        if c.records.done(agent, "post", idempotency_key).await.is_some() {
            return Ok(());
        }
        if text.trim().is_empty() {
            return Err(DeliveryError::permanent(format!("agent {}: empty message for Intercom", agent.id)));
        }
        let contact = c.conversation_contact(agent, cfg, desk_conversation_id).await?;
        let body = contact_comment_body(&contact, text);
        c.call(agent, cfg, Method::POST, &reply_path(desk_conversation_id), Some(&body)).await?;
        c.records.mark_done(agent, "post", idempotency_key, "1").await;
        Ok(())
    }

    /// Closes the conversation as the bot teammate, saying why (the user ended the chat, or
    /// it timed out).
    async fn close(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        reason: CloseReason,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let cfg = config(agent)?;
        let c = &self.client;
        if c.records.done(agent, "close", idempotency_key).await.is_some() {
            return Ok(());
        }
        let body = close_body(cfg, reason);
        c.call(agent, cfg, Method::POST, &parts_path(desk_conversation_id), Some(&body)).await?;
        c.records.mark_done(agent, "close", idempotency_key, "1").await;
        Ok(())
    }

    /// `GET /me` with the token, then `GET /admins/{bot_admin_id}`: both must answer.
    async fn probe(&self, agent: &Agent) -> (ServiceStatus, String) {
        let Some(cfg) = agent.intercom.as_ref() else {
            return (ServiceStatus::NotConfigured, "no [intercom] section: Intercom is not configured".into());
        };
        let c = &self.client;
        let host = redact_url(cfg.api_base.trim());
        match c.call(agent, cfg, Method::GET, ME_PATH, None).await {
            Ok(_) => {}
            Err(DeliveryError::Unauthorized { message }) => {
                return (ServiceStatus::Unavailable, format!("Intercom rejected the access token: {message}"))
            }
            // `/me` is documented as OAuth-only in older versions: not conclusive.
            Err(DeliveryError::Permanent { .. }) => {}
            Err(e) => return (ServiceStatus::Unavailable, e.to_string()),
        }
        match c.call(agent, cfg, Method::GET, &admin_path(&cfg.bot_admin_id), None).await {
            Ok(admin) => {
                let name = admin.get("name").and_then(Value::as_str).map(quote).unwrap_or_default();
                (
                    ServiceStatus::Available,
                    format!(
                        "Intercom answered at {host}; the assistant writes as teammate {name:?} ({})",
                        quote(cfg.bot_admin_id.trim())
                    ),
                )
            }
            Err(DeliveryError::Unauthorized { message }) => {
                (ServiceStatus::Unavailable, format!("Intercom rejected the access token: {message}"))
            }
            Err(DeliveryError::Permanent { message }) => (
                ServiceStatus::Unavailable,
                format!(
                    "intercom.bot_admin_id {:?} is not a teammate of this workspace: {message}",
                    quote(cfg.bot_admin_id.trim())
                ),
            ),
            Err(e) => (ServiceStatus::Unavailable, e.to_string()),
        }
    }
}

// -------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::model::{Button, Channel, Role, Turn};

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures() {
        let body = br#"{"type":"notification_event","topic":"ping"}"#;
        let good = sign("s3cret", body);
        assert!(verify_signature("s3cret", body, Some(&good)));
        assert!(verify_signature(" s3cret\n", body, Some(&format!("  {good} "))));
        assert!(verify_signature("s3cret", body, Some(&good.to_uppercase().replacen("SHA1=", "sha1=", 1))));
        assert!(verify_signature("s3cret", body, Some(&good.replacen("sha1=", "SHA1=", 1))));
        let mut tampered = body.to_vec();
        tampered[3] ^= 1;
        assert!(!verify_signature("s3cret", &tampered, Some(&good)));
        assert!(!verify_signature("other", body, Some(&good)));
        assert!(!verify_signature("", body, Some(&sign("", body))));
        assert!(!verify_signature("s3cret", body, None));
        assert!(!verify_signature("s3cret", body, Some("")));
        assert!(!verify_signature("s3cret", body, Some(&good[5..])));
        assert!(!verify_signature("s3cret", body, Some("sha256=00")));
        assert!(!verify_signature("s3cret", body, Some(&format!("{good}00"))));
        assert!(!verify_signature("s3cret", body, Some(&format!("sha1={}", "zz".repeat(20)))));
        assert!(!verify_signature("s3cret", body, Some("shä1=abc")));
    }

    #[test]
    fn html_becomes_text() {
        assert_eq!(html_to_text("<p>Hi <b>there</b></p>"), "Hi there");
        assert_eq!(html_to_text("<p>One</p><p>Two<br>Three</p>"), "One\nTwo\nThree");
        assert_eq!(html_to_text("<p>Tom &amp; Jerry &lt;3 &#8364; &#x41;</p>"), "Tom & Jerry <3 € A");
        assert_eq!(
            html_to_text(r#"<p>See <a href="https://x.test/a?b=1&amp;c=2">the docs</a></p>"#),
            "See the docs (https://x.test/a?b=1&c=2)"
        );
        assert_eq!(html_to_text(r#"<p><a href="https://x.test">https://x.test</a></p>"#), "https://x.test");
        assert_eq!(html_to_text("<ul><li>a</li><li>b</li></ul>"), "• a\n• b");
        assert_eq!(
            html_to_text(r#"<div class="intercom-container"><img src="https://cdn.test/i.png"></div>"#),
            "[image] https://cdn.test/i.png"
        );
        assert_eq!(html_to_text("<p>x</p><script>alert(1)</script><p>y</p>"), "x\ny");
        assert_eq!(html_to_text(r#"<p class="no-margin">Reusable<br><br><br><b>First</b></p>"#), "Reusable\n\nFirst");
        // Plain text (2.15+) is left alone.
        assert_eq!(html_to_text("  if a<b and c>d &amp; <3  "), "if a<b and c>d &amp; <3");
        assert_eq!(html_to_text("<p>unclosed <b"), "unclosed <b");
        assert_eq!(html_to_text("<p></p>"), "");
    }

    fn notification(topic: &str, item: Value) -> Vec<u8> {
        json!({
            "type": "notification_event",
            "app_id": "abc123",
            "data": {"type": "notification_event_data", "item": item},
            "links": {},
            "id": "notif_1",
            "topic": topic,
            "delivery_status": "pending",
            "delivery_attempts": 1,
            "delivered_at": 0,
            "first_sent_at": 1700000000,
            "created_at": 1700000000,
            "self": null,
        })
        .to_string()
        .into_bytes()
    }

    fn conversation(parts: Vec<Value>) -> Value {
        json!({
            "type": "conversation",
            "id": 215474343849634u64,
            "source": {
                "type": "conversation", "id": "100", "body": "<p>First</p>",
                "author": {"type": "user", "id": "c1", "name": "Ann", "email": "ann@example.com"},
                "attachments": [],
            },
            "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": "c1"}]},
            "conversation_parts": {"type": "conversation_part.list", "conversation_parts": parts, "total_count": 1},
        })
    }

    fn part(id: &str, part_type: &str, author_type: &str, author_id: &str, body: Value, at: i64) -> Value {
        json!({
            "type": "conversation_part", "id": id, "part_type": part_type, "body": body,
            "created_at": at, "notified_at": at,
            "author": {"type": author_type, "id": author_id, "name": "X", "email": "x@example.com"},
            "attachments": [], "redacted": false,
        })
    }

    #[test]
    fn parses_user_and_admin_parts() {
        let n = parse(&notification(
            TOPIC_USER_REPLIED,
            conversation(vec![part("7", "comment", "user", "c1", json!("<p>Where is <b>it</b>?</p>"), 5)]),
        ))
        .unwrap();
        assert_eq!(n.id, "notif_1");
        assert_eq!(
            n.event,
            WebhookEvent::UserMessage {
                conversation_id: "215474343849634".into(),
                part_id: "7".into(),
                contact_id: Some("c1".into()),
                email: Some("x@example.com".into()),
                text: "Where is it?".into(),
            }
        );
        let created = parse(&notification(TOPIC_USER_CREATED, conversation(vec![]))).unwrap();
        assert!(matches!(created.event, WebhookEvent::UserMessage { ref part_id, ref text, ref email, .. }
            if part_id == "100" && text == "First" && email.as_deref() == Some("ann@example.com")));

        let reply = parse(&notification(
            TOPIC_ADMIN_REPLIED,
            conversation(vec![part("8", "comment", "admin", "814860", json!("<p>Hello</p>"), 6)]),
        ))
        .unwrap();
        assert!(matches!(reply.event, WebhookEvent::AdminReply { ref admin_id, ref text, .. }
            if admin_id == "814860" && text == "Hello"));
        // An admin reply that also assigned the conversation.
        let assigned = parse(&notification(
            TOPIC_ADMIN_REPLIED,
            conversation(vec![part("9", "assignment", "admin", "5", json!("<p>Hey! How can I help?</p>"), 6)]),
        ))
        .unwrap();
        assert!(matches!(assigned.event, WebhookEvent::AdminReply { ref text, .. } if text == "Hey! How can I help?"));
        // The same without text is no reply.
        let bare = parse(&notification(
            TOPIC_ADMIN_REPLIED,
            conversation(vec![part("9", "assignment", "admin", "5", Value::Null, 6)]),
        ))
        .unwrap();
        assert!(matches!(bare.event, WebhookEvent::Other { .. }));
    }

    #[test]
    fn bots_notes_and_ai_are_not_human_replies() {
        for (topic, p) in [
            (TOPIC_ADMIN_REPLIED, part("1", "comment", "bot", "6827949", json!("<p>Fin here</p>"), 1)),
            (TOPIC_ADMIN_REPLIED, part("2", "note", "admin", "5", json!("<p>internal</p>"), 1)),
            (TOPIC_ADMIN_NOTED, part("3", "note", "admin", "5", json!("<p>internal</p>"), 1)),
            (TOPIC_OPERATOR_REPLIED, part("4", "comment", "bot", "6827949", json!("hi"), 1)),
            (TOPIC_ADMIN_ASSIGNED, part("5", "assignment", "admin", "5", Value::Null, 1)),
        ] {
            let n = parse(&notification(topic, conversation(vec![p]))).unwrap();
            assert!(
                matches!(n.event, WebhookEvent::Other { ref conversation_id, .. } if conversation_id.as_deref() == Some("215474343849634")),
                "{topic}: {:?}",
                n.event
            );
        }
        let mut ai = part("6", "comment", "admin", "5", json!("<p>AI</p>"), 1);
        ai["author"]["from_ai_agent"] = json!(true);
        let n = parse(&notification(TOPIC_ADMIN_REPLIED, conversation(vec![ai]))).unwrap();
        assert!(matches!(n.event, WebhookEvent::Other { ref why, .. } if why.contains("AI")));
    }

    #[test]
    fn newest_part_wins_and_closes_are_seen() {
        let n = parse(&notification(
            TOPIC_ADMIN_REPLIED,
            conversation(vec![
                part("2", "comment", "admin", "5", json!("second"), 20),
                part("1", "comment", "admin", "5", json!("first"), 10),
            ]),
        ))
        .unwrap();
        assert!(matches!(n.event, WebhookEvent::AdminReply { ref part_id, .. } if part_id == "2"));
        let closed = parse(&notification(TOPIC_ADMIN_CLOSED, conversation(vec![]))).unwrap();
        assert_eq!(closed.event, WebhookEvent::Closed { conversation_id: "215474343849634".into() });
        let close_part = parse(&notification(
            "conversation.admin.snoozed",
            conversation(vec![part("3", "close", "admin", "5", Value::Null, 1)]),
        ))
        .unwrap();
        assert!(matches!(close_part.event, WebhookEvent::Closed { .. }));
    }

    #[test]
    fn attachments_and_empty_parts() {
        let mut p = part("1", "comment", "user", "c1", json!(""), 1);
        p["attachments"] = json!([{"type": "upload", "name": "invoice.pdf", "url": "https://downloads.test/i.pdf",
            "content_type": "application/pdf", "filesize": 10}]);
        let n = parse(&notification(TOPIC_USER_REPLIED, conversation(vec![p]))).unwrap();
        assert!(
            matches!(n.event, WebhookEvent::UserMessage { ref text, .. } if text == "[file: invoice.pdf] https://downloads.test/i.pdf")
        );
        let empty = part("2", "comment", "user", "c1", Value::Null, 1);
        let n = parse(&notification(TOPIC_USER_REPLIED, conversation(vec![empty]))).unwrap();
        assert!(matches!(n.event, WebhookEvent::UserMessage { ref text, .. } if text == "[message without text]"));
        let mut redacted = part("3", "comment", "user", "c1", json!("secret"), 1);
        redacted["redacted"] = json!(true);
        let n = parse(&notification(TOPIC_USER_REPLIED, conversation(vec![redacted]))).unwrap();
        assert!(matches!(n.event, WebhookEvent::UserMessage { ref text, .. } if text == "[redacted message]"));
        let long = part("4", "comment", "user", "c1", json!("x".repeat(MAX_TEXT_BYTES * 2)), 1);
        let n = parse(&notification(TOPIC_USER_REPLIED, conversation(vec![long]))).unwrap();
        assert!(matches!(n.event, WebhookEvent::UserMessage { ref text, .. } if text.len() <= MAX_TEXT_BYTES));
    }

    #[test]
    fn ping_and_other_topics() {
        let ping = json!({"type": "notification_event", "app_id": "a", "data": {"type": "notification_event_data",
            "item": {"type": "ping", "message": "hi"}}, "id": null, "topic": "ping", "delivery_attempts": 1,
            "created_at": 1553288147});
        let n = parse(ping.to_string().as_bytes()).unwrap();
        assert_eq!(n.event, WebhookEvent::Ping);
        assert!(n.id.starts_with("derived-") && n.id.len() == 40, "{}", n.id);
        assert_eq!(parse(ping.to_string().as_bytes()).unwrap().id, n.id);
        let contact = json!({"type": "notification_event", "id": "notif_2", "topic": "contact.user.created",
            "data": {"item": {"type": "contact", "id": "c1"}}});
        let n = parse(contact.to_string().as_bytes()).unwrap();
        assert!(
            matches!(n.event, WebhookEvent::Other { ref topic, conversation_id: None, .. } if topic == "contact.user.created")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |b: &[u8]| parse(b).unwrap_err().to_string();
        assert!(err(b"nope").starts_with("request body is not JSON"));
        assert_eq!(err(b"[]"), "request body must be a JSON object");
        assert_eq!(err(br#"{"id":"n"}"#), "topic: missing");
        assert_eq!(err(br#"{"id":"n","topic":7}"#), "topic: must be a non-empty topic name");
        assert_eq!(err(br#"{"id":"n","topic":"conversation.user.replied"}"#), "data.item: missing");
        assert_eq!(err(br#"{"id":"n","topic":"conversation.user.replied","data":[]}"#), "data: must be an object");
        assert!(err(br#"{"id":"n","topic":"conversation.user.replied","data":{"item":{"type":"conversation"}}}"#)
            .starts_with("data.item.id: missing"));
        assert_eq!(err(br#"{"id":5,"topic":"ping"}"#), "id: must be a string");
        let no_part_id = notification(
            TOPIC_ADMIN_REPLIED,
            conversation(vec![json!({"part_type": "comment", "author": {"type": "admin", "id": "5"}, "body": "x"})]),
        );
        assert!(err(&no_part_id).starts_with("data.item.conversation_parts.conversation_parts[].id: missing"));
        let mut huge = conversation(vec![]);
        huge["id"] = json!("x".repeat(MAX_USER_ID_LEN + 1));
        assert!(err(&notification(TOPIC_USER_CREATED, huge)).starts_with("data.item.id: must be at most"));
        assert_eq!(parse(&vec![b' '; MAX_INBOUND_BYTES + 1]), Err(ParseError::TooLarge));
        // Odd shapes never panic.
        for body in [
            json!({"topic": "conversation.admin.replied", "data": {"item": {"id": "1", "conversation_parts": 5}}}),
            json!({"topic": "conversation.admin.replied", "data": {"item": {"id": "1", "conversation_parts": {"conversation_parts": [1, "x", null]}}}}),
            json!({"topic": "conversation.user.created", "data": {"item": {"id": "1", "source": {"body": 5, "author": []}}}}),
            json!({"topic": "conversation.user.replied", "data": {"item": {"id": "1", "conversation_parts": {"conversation_parts": [{"author": {"type": "user"}, "id": "p", "attachments": [1, {"url": "javascript:x"}]}]}}}}),
        ] {
            let _ = parse(body.to_string().as_bytes());
        }
    }

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status,
            retry_after: None,
            rate_reset: None,
            body: body.to_string().into_bytes(),
            what: "POST https://api.intercom.io/contacts".into(),
        }
    }

    #[test]
    fn answers_are_classified() {
        let now = Millis(1_700_000_000_000);
        assert_eq!(classify(&answer(200, json!({"id": "1"})), "tok", now).unwrap()["id"], "1");
        assert_eq!(classify(&answer(204, Value::Null), "tok", now).unwrap(), Value::Null);
        let errors = json!({"type": "error.list", "errors": [{"code": "parameter_invalid", "message": "Bad thing"}]});
        assert_eq!(
            classify(&answer(400, errors.clone()), "tok", now).unwrap_err(),
            DeliveryError::permanent(
                "POST https://api.intercom.io/contacts answered HTTP 400: Intercom error parameter_invalid: Bad thing"
            )
        );
        assert!(matches!(classify(&answer(401, errors.clone()), "tok", now), Err(DeliveryError::Unauthorized { .. })));
        assert!(matches!(classify(&answer(403, json!({})), "tok", now), Err(DeliveryError::Unauthorized { .. })));
        for s in [500, 502, 503] {
            assert!(matches!(classify(&answer(s, json!({})), "tok", now), Err(DeliveryError::Retryable { .. })));
        }
        let mut limited = answer(429, json!({"errors": [{"code": "rate_limit_exceeded"}]}));
        limited.rate_reset = Some("1700000003".into());
        assert!(matches!(classify(&limited, "tok", now),
            Err(DeliveryError::Retryable { retry_after_ms: Some(3000), ref message }) if message.contains("rate_limit_exceeded")));
        limited.rate_reset = Some("1699999999".into());
        assert!(matches!(
            classify(&limited, "tok", now),
            Err(DeliveryError::Retryable { retry_after_ms: Some(1000), .. })
        ));
        limited.rate_reset = Some("1800000000".into());
        assert!(matches!(
            classify(&limited, "tok", now),
            Err(DeliveryError::Retryable { retry_after_ms: Some(MAX_RATE_LIMIT_WAIT_MS), .. })
        ));
        limited.rate_reset = None;
        limited.retry_after = Some("7".into());
        assert!(matches!(
            classify(&limited, "tok", now),
            Err(DeliveryError::Retryable { retry_after_ms: Some(7000), .. })
        ));
        // Long messages are cut, the token never shows.
        let e = classify(
            &answer(422, json!({"errors": [{"message": format!("tok-SECRET-123 {}", "x".repeat(500))}]})),
            "tok-SECRET-123",
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("tok-SECRET-123") && e.ends_with('…'), "{e}");
    }

    #[test]
    fn contact_helpers() {
        assert_eq!(
            conflict_id("A contact matching those details already exists with id=5da6f18e3d7cf967e4582d05").as_deref(),
            Some("5da6f18e3d7cf967e4582d05")
        );
        assert_eq!(conflict_id("nothing here"), None);
        let list = json!({"type": "list", "data": [
            {"type": "contact", "id": "l1", "role": "lead", "email": "ann@example.com"},
            {"type": "contact", "id": "u0", "role": "user", "email": "annie@example.com"},
            {"type": "contact", "id": "u1", "role": "user", "email": "ANN@example.com"},
        ], "total_count": 3});
        assert_eq!(pick_contact(&list, "email", "ann@example.com"), Some(Contact { id: "u1".into(), role: "user" }));
        let leads = json!({"data": [{"id": "l1", "role": "lead", "email": "ann@example.com"}]});
        assert_eq!(pick_contact(&leads, "email", "ann@example.com"), Some(Contact { id: "l1".into(), role: "lead" }));
        assert_eq!(pick_contact(&json!({"data": []}), "email", "a@b.c"), None);
        assert_eq!(pick_contact(&Value::Null, "email", "a@b.c"), None);
        assert_eq!(Contact::decode("lead:abc"), Some(Contact { id: "abc".into(), role: "lead" }));
        assert_eq!(Contact::decode("junk"), None);
        let key = ConversationKey::new("shop", Channel::Telegram, "42").unwrap();
        let a = contact_external_id(&key, "Ann@Example.com ");
        assert!(a.starts_with("baton-") && a.len() == 30);
        assert_eq!(a, contact_external_id(&key, "ann@example.com"));
        assert_ne!(a, contact_external_id(&key, "bob@example.com"));
        assert_eq!(
            conversation_id_in(&json!({"type": "user_message", "id": "2001", "conversation_id": "36000324324"}))
                .as_deref(),
            Some("36000324324")
        );
        assert_eq!(conversation_id_in(&json!({"type": "conversation", "id": 5})).as_deref(), Some("5"));
        assert_eq!(conversation_id_in(&json!({"type": "user_message", "id": "2001"})), None);
    }

    fn request(history: Vec<Turn>) -> HandoffRequest {
        HandoffRequest {
            params: Default::default(),
            handoff_id: "h1".into(),
            email: "ann@example.com".into(),
            history,
            question: "Where is my refund?".into(),
            reason: "user asked for a human".into(),
        }
    }

    #[test]
    fn transcripts_and_bodies() {
        let key = ConversationKey::new("shop", Channel::Telegram, "42").unwrap();
        let turns = vec![
            Turn { role: Role::User, text: "hello\nthere".into(), at: Millis(1) },
            Turn { role: Role::Bot, text: "Hi! How can I help?".into(), at: Millis(2) },
            Turn { role: Role::System, text: "internal".into(), at: Millis(3) },
        ];
        assert_eq!(
            transcript(&key, &request(turns)),
            "The AI assistant handed this conversation over to a human.\nReason: user asked for a human\n\n\
             Earlier messages:\nUser: hello there\nAssistant: Hi! How can I help?\n\n\
             Question: Where is my refund?\n\nE-mail: ann@example.com\nChannel: telegram"
        );
        let many: Vec<Turn> = (0..300)
            .map(|i| Turn { role: Role::User, text: format!("message {i} {}", "x".repeat(60)), at: Millis(i) })
            .collect();
        let t = transcript(&key, &request(many));
        assert!(t.chars().count() <= MAX_TRANSCRIPT_CHARS);
        assert!(t.contains("message 299") && !t.contains("message 0 ") && t.contains("Earlier messages:\n…\n"));

        let cfg: IntercomConfig = serde_json::from_value(json!({
            "access_token": "t", "client_secret": "s", "bot_admin_id": " 814860 ",
        }))
        .unwrap();
        assert_eq!(
            assignment_body(&cfg, "team", "5017691"),
            json!({"message_type": "assignment", "type": "team", "admin_id": "814860", "assignee_id": "5017691"})
        );
        assert_eq!(close_body(&cfg, CloseReason::Timeout)["body"], "The chat timed out.");
        assert_eq!(close_body(&cfg, CloseReason::UserClosed)["body"], "The user ended the chat.");
        assert_eq!(note_body(&cfg, "n")["message_type"], "note");
        assert_eq!(
            contact_comment_body("c1", "hi"),
            json!({"message_type": "comment", "type": "user", "intercom_user_id": "c1", "body": "hi"})
        );
        let mut m = OutMessage::new(Role::Bot, "Still there? Choose: End");
        m.buttons = vec![
            Button { label: "End".into(), value: "end".into() },
            Button { label: "Keep waiting".into(), value: "wait".into() },
        ];
        assert_eq!(render(&m), "Still there? Choose: End\n• Keep waiting");
    }

    #[test]
    fn odd_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "<>/&;#x\"'= pbraimgsrchef1ä€\n".chars().collect();
        for _ in 0..3000 {
            let len = rng.gen_range(0..40);
            let s: String = (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect();
            let _ = html_to_text(&format!("<p>{s}"));
            let _ = html_to_text(&s);
            let _ = verify_signature("k", s.as_bytes(), Some(&s));
            let body = json!({"id": "n", "topic": TOPIC_USER_REPLIED, "data": {"item": {"id": "1",
                "conversation_parts": {"conversation_parts": [{"id": "p", "body": s, "author": {"type": "user"}}]}}}});
            assert!(parse(body.to_string().as_bytes()).is_ok());
        }
    }

    #[test]
    fn paths_escape_their_segments() {
        assert_eq!(reply_path("123"), "/conversations/123/reply");
        assert_eq!(parts_path("a/b"), "/conversations/a%2Fb/parts");
        assert_eq!(admin_path(" 814860 "), "/admins/814860");
    }
}
