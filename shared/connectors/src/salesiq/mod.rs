//! Zoho SalesIQ: the hub as an AI operator inside SalesIQ chats (flow 1 of seed 002), SalesIQ
//! as the human desk for users of other channels (flow 2) and transfers to a department inside
//! a SalesIQ chat (flow 3).
//!
//! - [`signature`]: verify `x-siqsignature` (RSA PKCS#1 v1.5 / SHA-256) on webhook bodies.
//! - [`webhook`]: parse `conversation.*` webhook notifications.
//! - [`oauth`]: Zoho Accounts access tokens, shared through the `KeyValue` store.
//! - [`api`]: the REST calls (operator message, visitor conversation and messages, transfer,
//!   close) and the `Desk` port.
//!
//! # Wire facts (research, with sources and confidence)
//!
//! Tags as in `PROTOCOLS.md`: **[C]** the vendor's own docs, **[S]** secondary (third-party
//! code or copies of the docs), **[U]** unconfirmed: the most likely form, kept in one constant
//! (see [`api`]) so it is easy to change.
//!
//! 1. **Posting as the hub's operator (flow 1).** `POST {server}/api/v2/{screen_name}/conversations/{conversation_id}/messages`
//!    with `{"text": "..."}`, scope `SalesIQ.conversations.CREATE`; the message is sent as the
//!    operator whose OAuth grant the hub holds. [C]
//!    <https://www.zoho.com/salesiq/help/developer-section/send-message-operator-conversation-v2.html>.
//!    The Zobot route was rejected: a Zobot webhook must answer within 5 s with the reply in its
//!    response [C] <https://zoho.com/salesiq/help/developer-section/zobot-webhook-authentication-2.0.html>,
//!    which does not fit a queue-driven worker. The page shows no response example, so whether
//!    the answer carries the new message's id is **[U]**: the id is taken from `data.id`,
//!    `data.msgid`, `data.message_id` or `data.message.{id,msgid}` when present
//!    ([`api::MESSAGE_ID_PATHS`]); without it, own messages are recognised by
//!    `salesiq.bot_operator_id` only.
//! 2. **Auth header.** Zoho Accounts accepts `Authorization: Zoho-oauthtoken <token>` or
//!    `Authorization: Bearer <token>` for Zoho REST APIs [C]
//!    <https://www.zoho.com/accounts/protocol/oauth/use-access-token.html>; working SalesIQ
//!    visitor-API clients send `Zoho-oauthtoken` [S] (the botpress HITL client sends `Bearer` [S]).
//!    We send `Zoho-oauthtoken` ([`api::AUTH_SCHEME`]). SalesIQ answers **errors with HTTP 200 as
//!    well**, as `{"error": {"code": 1002, "message": "Invalid authorization header."}}`; codes
//!    1001/1002 are authentication errors [C]
//!    <https://www.zoho.com/salesiq/help/developer-section/rest-api-v2.html>,
//!    <https://www.zoho.com/salesiq/help/developer-section/rest-api-new.html>. So a 2xx with an
//!    `error` object is a failure here, and an expired token may arrive either as HTTP 401 or as
//!    such a 200 [U].
//! 3. **Webhooks.** Envelope `{entity_type, event, org_id, entity_id, app_id, attempt, version,
//!    event_time, webhook:{id}, entity:{...}}` [C]
//!    <https://www.zoho.com/salesiq/help/developer-section/workflows-module-operator.html>, extra
//!    fields [S] (botpress zod schema). `entity_id` and `entity.id` are the conversation id used by
//!    the REST paths [S].
//!    - `conversation.operator.replied`: `entity.message = {msgid, text, sender:{id, name,
//!      type:"operator"}, meta}` [S] (botpress schema).
//!    - `conversation.visitor.replied`: the same `entity.message` with `sender.type: "visitor"`
//!      **[U]**; the workflow field list names "Visitor Message (Text)" and "Visitor Message
//!      (Contains Attachment)" [S]. Attachments: a `file`/`attachment` object with a `name` is
//!      turned into `[file: name]` [U].
//!    - `conversation.created`: the conversation object with `question` and `visitor{email_id,
//!      name, ...}` [C] <https://www.zoho.com/salesiq/help/developer-section/workflows-module-conversation.html>.
//!    - `conversation.completed`: the conversation object plus `end_time`, `ended_by` [S]
//!      (a copy of Zoho's webhook help page).
//!    - Whether the first question of `conversation.created` *also* arrives as
//!      `conversation.visitor.replied` is **[U]** (not documented). The runtime should answer the
//!      question once: e.g. treat `Created` as the first message and drop a `VisitorReplied` with
//!      the same text that follows it closely.
//!    - `attempt` counts deliveries [S]; the dedupe key leaves it (and `event_time`) out.
//!    - Signature: header `x-siqsignature`, Base64 of an RSA SHA-256 signature over the raw
//!      UTF-8 body [C] <https://www.zoho.com/salesiq/help/webhooks.html>; PKCS#1 v1.5 padding and
//!      an X.509 SubjectPublicKeyInfo key (PEM or bare base64 DER) [S] (independent open-source
//!      verifiers in Java, Python and Node); up to two keys during a rotation [S].
//! 4. **Visitor API (flow 2).** Open: `POST {server}/api/visitor/v1/{screen_name}/conversations`
//!    with `app_id`, `department_id`, `question` (the first visitor message) and
//!    `visitor.user_id` mandatory, `visitor.{name, email, ...}` optional [C]
//!    <https://zoho.com/salesiq/help/developer-section/open-conversation-v1.html> (URL form [S]
//!    from working clients); it needs an Org OAuth token (`client_type=ORG`) [C]. The answer
//!    follows the general `{"data": {..., "id": "<conversation id>"}}` format [S]. Visitor
//!    message: `POST {server}/api/visitor/v1/{screen_name}/conversations/{id}/messages` with
//!    `{"text"}` [C] <https://prewww.zoho.com/salesiq/help/developer-section/send-message-visitor-conversation-v2.html>.
//!    Ending a chat: the operator API `…/api/v2/{screen_name}/conversations/{id}/close`, scope
//!    `SalesIQ.conversations.UPDATE` [C] <https://zoho.com/salesiq/help/developer-section/close-chat-v2.html>;
//!    the page does not state the HTTP method: **PUT [U]** ([`api::CLOSE_METHOD`]). A visitor-side
//!    `…/visitor/v2/{screen_name}/conversations/{id}/close` exists too [C]
//!    <https://www.zoho.com/salesiq/help/developer-section/rest-api-conversation-visitor-close-v2.html>,
//!    without method or auth stated; not used.
//! 5. **Transfer (flow 3).** `PUT {server}/api/v2/{screen_name}/conversations/{id}/transfer` with
//!    `department_id` (mandatory), `operator_id`, and a note; scope `SalesIQ.conversations.UPDATE`
//!    [C] <https://www.zoho.com/salesiq/help/developer-section/rest-api-transfer-chat-v2.html>. The
//!    field list says `notes` but the example payload sends `note`: **`note` [U]**
//!    ([`api::TRANSFER_NOTE_FIELD`]).
//! 6. **Zoho Accounts refresh.** `POST {accounts}/oauth/v2/token` with `refresh_token`,
//!    `client_id`, `client_secret`, `grant_type=refresh_token` (form or query) →
//!    `{"access_token", "expires_in": 3600, "api_domain", "token_type": "Bearer"}` [C]
//!    <https://www.zoho.com/assist/api/refresh-access-token.html>. A revoked or wrong refresh token
//!    is answered **HTTP 200 `{"error": "invalid_code"}`** [S] (Zoho community threads; GitHub
//!    Weble/ZohoBooksApi#84 shows the 200; schmorrison/Zoho#18); a wrong client id/secret or data
//!    centre gives `invalid_client` [S] (Zoho "Kaizen #4" troubleshooting post). Too many refreshes
//!    (Zoho CRM documents 10 access tokens per refresh token per 10 minutes) is answered HTTP 200
//!    with `"error": "Access Denied"` [S] (Zoho "Kaizen #43"): that is throttling, retried later,
//!    never taken for a revoked token. Some older Zoho answers give `expires_in` in milliseconds
//!    with `expires_in_sec` beside it [S]; both are understood.
//!
//! # How the desk uses them
//!
//! - `open`: a user already in SalesIQ (`desk.hosts(channel)`; `key.user` is their conversation)
//!   is transferred (5); anyone else gets a visitor conversation (4) whose `question` is a
//!   readable transcript (reason, the most recent earlier messages, the question, the e-mail),
//!   visitor `user_id` `baton-` + 24 hex digits of SHA-256 of the conversation key.
//! - `post`: a visitor message (4).
//! - `close`: in a conversation the hub opened as the visitor, first a last visitor message
//!   saying the user ended the chat or did not reply in time, then "Close a Chat" (4).
//! - `probe`: a token (6), then `GET /api/v2/{screen_name}/departments/{department_id}` (or
//!   `/apps/{app_id}` without the SalesIQ desk).
//! - Completed calls are remembered in the `KeyValue` store by idempotency key for two days, so
//!   an effect retried after a crash does not open a second chat or repeat a message.
//!
//! Hosts come from `salesiq.server` / `salesiq.accounts_server` (one pair per data centre, e.g.
//! `https://salesiq.zoho.eu` / `https://accounts.zoho.eu` [C]
//! <https://www.zoho.com/salesiq/help/developer-section/rest-api-v2.html>).
//!
//! The `rsa` crate is used for signature *verification* only (public keys); the Marvin timing
//! advisory (RUSTSEC-2023-0071) concerns private-key decryption and does not apply.

pub mod api;
pub mod oauth;
pub mod signature;
pub mod webhook;

pub use api::{SalesiqClient, SalesiqDesk};
pub use oauth::ZohoAuth;
pub use signature::{verify, SignatureError, SIGNATURE_HEADER};
pub use webhook::{parse, Notification, Visitor, WebhookEvent};

#[cfg(test)]
use crate::outbound::MAX_QUOTED_CHARS;
pub(crate) use crate::outbound::{quote, read_limited, transport_error, MAX_RESPONSE_BYTES};
use baton_core::ports::DeliveryError;

/// A configured base URL without its trailing `/`; only http(s) URLs are accepted.
pub(crate) fn base_url<'a>(value: &'a str, field: &str, agent: &str) -> Result<&'a str, DeliveryError> {
    let base = value.trim().trim_end_matches('/');
    match reqwest::Url::parse(base) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(base),
        _ => Err(DeliveryError::permanent(format!("agent {agent}: {field} must be an http:// or https:// URL"))),
    }
}

/// One URL path segment, percent-encoded (ids and screen names come from configuration and
/// webhooks; a `/` or `?` in them must not change the path).
pub(crate) use baton_core::net::encode_unreserved as segment;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("zylker-inc"), "zylker-inc");
        assert_eq!(segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(segment("ü"), "%C3%BC");
    }

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(base_url(" https://salesiq.zoho.eu/ ", "salesiq.server", "a").unwrap(), "https://salesiq.zoho.eu");
        assert!(base_url("ftp://x", "salesiq.server", "a").is_err());
        assert!(base_url("salesiq.zoho.com", "salesiq.server", "a").is_err());
    }

    #[test]
    fn quotes_are_bounded() {
        let q = quote(&"x\n".repeat(300));
        assert!(!q.contains('\n'));
        assert!(q.ends_with('…'));
        assert_eq!(q.chars().count(), MAX_QUOTED_CHARS + 1);
    }
}
