//! The LiveChat Chat API calls and the `Desk` port for `desk.kind = "livechat"`.
//!
//! Every call is a JSON POST with a Bearer token from [`LivechatAuth`] (the agent's, the bot's
//! or the customer's), `X-Region` for tokens of another data centre, and the shared client's
//! timeout. A rejected cached token is dropped and the call tried once more with a new one; a
//! rejected new token is `Unauthorized`. Errors follow [`super::classify`] and never show a
//! token or a secret. Completed calls are remembered by idempotency key for two days, so an
//! effect retried after a crash does not start a second chat or repeat a message.

use super::oauth::{bot_credentials, LivechatAuth, Token};
use super::{
    base_url, custom_id, cut, encode, hash, is_chat_inactive, post_json, Failure, API_VERSION, CUSTOM_ID_PREFIX,
    MAX_TEXT_BYTES,
};
use crate::outbound::redact_url;
use crate::records::CallRecords;
use crate::transcript::cut_chars;
use async_trait::async_trait;
use baton_core::agent::{Agent, DeskConfig, LivechatConfig};
use baton_core::effect::HandoffRequest;
use baton_core::model::{CloseReason, ConversationKey, Millis, OutMessage, ServiceStatus};
use baton_core::ports::{Clock, DeliveryError, Desk, KeyValue};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long the hub remembers which end user a chat it started belongs to.
pub const CHAT_RECORD_MS: i64 = 90 * 24 * 3600 * 1000;
/// Longest transcript (first message of a relayed chat), in characters (≤ 16 KB in UTF-8).
pub const MAX_TRANSCRIPT_CHARS: usize = 4000;

/// Which Chat API a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Agent,
    Customer,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::Agent => "agent",
            Api::Customer => "customer",
        }
    }
}

/// Whose token a call carries.
#[derive(Debug, Clone, Copy)]
enum Who<'a> {
    /// The agent of the configured refresh token.
    Agent,
    /// The configured bot agent (or, without one, the agent).
    Bot,
    /// The customer the hub acts as for this end user (conversation key).
    Customer(&'a str),
}

fn config(agent: &Agent) -> Result<&LivechatConfig, DeliveryError> {
    agent.livechat.as_ref().ok_or_else(|| {
        DeliveryError::permanent(format!(
            "agent {} has no [livechat] section (LiveChat account and OAuth client)",
            agent.id
        ))
    })
}

/// The LiveChat client. Cheap to clone; one per process.
#[derive(Clone)]
pub struct LivechatClient {
    http: reqwest::Client,
    timeout: Duration,
    auth: Arc<LivechatAuth>,
    kv: Arc<dyn KeyValue>,
    clock: Arc<dyn Clock>,
    records: CallRecords,
}

impl LivechatClient {
    pub fn new(http: reqwest::Client, timeout: Duration, kv: Arc<dyn KeyValue>, clock: Arc<dyn Clock>) -> Self {
        let auth = Arc::new(LivechatAuth::new(http.clone(), timeout, kv.clone(), clock.clone()));
        let records = CallRecords::new("livechat", "LiveChat", kv.clone(), clock.clone());
        LivechatClient { http, timeout, auth, kv, clock, records }
    }

    /// The token cache this client uses.
    pub fn auth(&self) -> &LivechatAuth {
        &self.auth
    }

    /// The bot agent's answer in a LiveChat chat (desk -> desk): Agent Chat API `send_event` as
    /// the bot, with a `custom_id` derived from the idempotency key (so its echo is recognised);
    /// a retry with the same key sends nothing. Buttons are listed as text lines.
    pub async fn send_as_bot(
        &self,
        agent: &Agent,
        chat_id: &str,
        message: &OutMessage,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let cfg = config(agent)?;
        if bot_credentials(cfg).is_none() {
            return Err(DeliveryError::permanent(format!(
                "agent {}: livechat.bot_agent_id and livechat.bot_secret are needed to answer LiveChat chats",
                agent.id
            )));
        }
        if self.records.done(agent, "say", idempotency_key).await.is_some() {
            return Ok(());
        }
        let text = render(message);
        if text.trim().is_empty() {
            return Err(DeliveryError::permanent(format!("agent {}: empty message for LiveChat", agent.id)));
        }
        let body = json!({
            "chat_id": chat_id,
            "event": {
                "type": "message",
                "text": cut(&text, MAX_TEXT_BYTES),
                "custom_id": custom_id("say", idempotency_key),
                "visibility": "all",
            },
        });
        self.call(agent, Api::Agent, "send_event", Who::Bot, &body).await?;
        self.records.mark_done(agent, "say", idempotency_key, "1").await;
        Ok(())
    }

    /// Whether a `Message` event is the hub's own: its author is the bot agent or a customer
    /// the hub acts as, or its `custom_id` carries the hub's prefix.
    pub async fn is_own_event(&self, agent: &Agent, author_id: &str, custom_id: Option<&str>) -> bool {
        if custom_id.is_some_and(|c| c.trim().starts_with(CUSTOM_ID_PREFIX)) {
            return true;
        }
        let Some(cfg) = agent.livechat.as_ref() else { return false };
        let author = author_id.trim();
        if cfg.bot_agent_id.as_deref().map(str::trim).is_some_and(|b| !b.is_empty() && b == author) {
            return true;
        }
        self.auth.is_own_customer(&agent.id, author).await
    }

    /// Whether `author_id` is on the desk's side (a LiveChat agent or bot) rather than the
    /// customer: agents are identified by their login e-mail, bots by 32 hex digits,
    /// customers by a UUID (see the module docs, fact 10).
    pub async fn is_agent(&self, agent: &Agent, author_id: &str) -> bool {
        let author = author_id.trim();
        if author.is_empty() || self.auth.is_own_customer(&agent.id, author).await {
            return false;
        }
        let bot = agent.livechat.as_ref().and_then(|c| c.bot_agent_id.as_deref()).map(str::trim);
        author.contains('@')
            || bot.is_some_and(|b| b == author)
            || (author.len() == 32 && author.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    /// One authenticated call; the answer's JSON. A rejected cached token is renewed once; a
    /// `misdirected_request` is retried once in the data centre it names.
    async fn call(
        &self,
        agent: &Agent,
        api: Api,
        action: &str,
        who: Who<'_>,
        body: &Value,
    ) -> Result<Value, DeliveryError> {
        let cfg = config(agent)?;
        let base = base_url(&cfg.api_base, "livechat.api_base", &agent.id)?;
        let mut url = format!("{base}/{API_VERSION}/{}/action/{action}", api.path());
        if api == Api::Customer {
            url.push_str(&format!("?organization_id={}", encode(cfg.organization_id.trim())));
        }
        let what = format!("POST {}", redact_url(&url));
        let mut retried = false;
        let mut region: Option<String> = None;
        loop {
            let (token, entity) = self.token(agent, cfg, who).await?;
            let reply =
                post_json(&self.http, self.timeout, &url, &what, Some(&token.secret), region.as_deref(), body).await?;
            match super::classify(&reply) {
                Ok(v) => return Ok(v),
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::Misdirected(r)) if region.is_none() => {
                    tracing::info!(agent = %agent.id, region = %r, "LiveChat asked for another data centre; retrying there");
                    region = Some(r);
                }
                Err(Failure::Misdirected(r)) => {
                    return Err(DeliveryError::permanent(format!("{what}: wrong data centre even with X-Region {r}")));
                }
                Err(Failure::Token(detail)) if token.fresh || retried => {
                    let message = format!(
                        "{what} rejected a newly issued {} token of agent {}{detail}: check the app's scopes \
                         (chats--all:rw, customers:own), the organization and the group, then authorize again",
                        who.name(),
                        agent.id
                    );
                    match who {
                        Who::Agent => self.auth.reject_fresh_agent_token(&agent.id, cfg, &message).await,
                        Who::Bot if bot_credentials(cfg).is_some() => {
                            self.auth.reject_fresh_bot_token(&agent.id, cfg, &message).await
                        }
                        Who::Bot => self.auth.reject_fresh_agent_token(&agent.id, cfg, &message).await,
                        Who::Customer(_) => {
                            if let Some(e) = &entity {
                                self.auth.invalidate_customer(&agent.id, cfg, e).await;
                            }
                        }
                    }
                    return Err(DeliveryError::Unauthorized { message });
                }
                Err(Failure::Token(_)) => {
                    tracing::info!(agent = %agent.id, %what, "LiveChat rejected a cached token; renewing it");
                    match who {
                        Who::Agent => self.auth.invalidate_agent(&agent.id, cfg).await,
                        Who::Bot if bot_credentials(cfg).is_some() => self.auth.invalidate_bot(&agent.id, cfg).await,
                        Who::Bot => self.auth.invalidate_agent(&agent.id, cfg).await,
                        Who::Customer(_) => {
                            if let Some(e) = &entity {
                                self.auth.invalidate_customer(&agent.id, cfg, e).await;
                            }
                        }
                    }
                    retried = true;
                }
            }
        }
    }

    async fn token(
        &self,
        agent: &Agent,
        cfg: &LivechatConfig,
        who: Who<'_>,
    ) -> Result<(Token, Option<String>), DeliveryError> {
        Ok(match who {
            Who::Agent => (self.auth.agent(&agent.id, cfg).await?, None),
            Who::Bot if bot_credentials(cfg).is_some() => (self.auth.bot(&agent.id, cfg).await?, None),
            Who::Bot => (self.auth.agent(&agent.id, cfg).await?, None),
            Who::Customer(key) => {
                let (t, e) = self.auth.customer(&agent.id, cfg, key).await?;
                (t, Some(e))
            }
        })
    }

    fn chat_name(agent: &Agent, chat_id: &str) -> String {
        format!("livechat:chat:{}:{}", agent.id, hash(&[chat_id.trim()], 32))
    }

    /// The end user (conversation key) of a chat the hub started as the customer.
    async fn chat_customer(&self, agent: &Agent, chat_id: &str) -> Result<Option<String>, DeliveryError> {
        self.kv
            .get(&Self::chat_name(agent, chat_id), self.clock.now())
            .await
            .map_err(|e| DeliveryError::retryable(format!("key-value store for LiveChat chats: {e}")))
    }
}

impl Who<'_> {
    fn name(&self) -> &'static str {
        match self {
            Who::Agent => "agent",
            Who::Bot => "bot",
            Who::Customer(_) => "customer",
        }
    }
}

/// Text plus the labels of buttons the text does not already list, one per line.
fn render(message: &OutMessage) -> String {
    let mut text = message.text.clone();
    for b in &message.buttons {
        if !b.label.trim().is_empty() && !message.text.contains(b.label.as_str()) {
            text.push_str("\n• ");
            text.push_str(b.label.trim());
        }
    }
    text
}

/// The first customer message of a relayed handoff: the reason, as many of the most recent
/// earlier messages as fit in [`MAX_TRANSCRIPT_CHARS`], the question, the e-mail and the channel.
pub fn transcript(key: &ConversationKey, request: &HandoffRequest) -> String {
    let style = crate::transcript::Style {
        intro: "",
        bot: "Bot",
        max_chars: MAX_TRANSCRIPT_CHARS,
        question_chars: 1500,
        line_chars: 500,
        no_email: "(none)",
    };
    crate::transcript::transcript(key, request, &style)
}

/// The body of Customer Chat API `start_chat` for a relayed handoff: a continuous chat (no
/// online group needed) in the desk's group whose first event is the transcript.
pub fn start_chat_body(group_id: u64, key: &ConversationKey, request: &HandoffRequest, idempotency_key: &str) -> Value {
    json!({
        "chat": {
            "access": {"group_ids": [group_id]},
            "thread": {
                "events": [{
                    "type": "message",
                    "text": transcript(key, request),
                    "custom_id": custom_id("open", idempotency_key),
                    "visibility": "all",
                }],
            },
        },
        "active": true,
        "continuous": true,
    })
}

/// The note for the agents (visible to agents only) posted before a transfer.
pub fn transfer_note(request: &HandoffRequest) -> String {
    let email = request.email.trim();
    let mut note = format!(
        "Handed over by the AI assistant.\nReason: {}\nQuestion: {}",
        cut_chars(request.reason.trim(), 300),
        cut_chars(request.question.trim(), 1500)
    );
    if !email.is_empty() {
        note.push_str(&format!("\nE-mail: {}", cut_chars(email, 254)));
    }
    note
}

/// The customer's last words when the hub ends a relayed chat.
pub fn close_note(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::UserClosed => "[The user ended the chat.]",
        CloseReason::Timeout => "[The chat ended: the user did not reply in time.]",
    }
}

/// The Desk port for `DeskConfig::Livechat`.
#[derive(Clone)]
pub struct LivechatDesk {
    client: LivechatClient,
}

impl LivechatDesk {
    pub fn new(client: LivechatClient) -> Self {
        LivechatDesk { client }
    }

    pub fn client(&self) -> &LivechatClient {
        &self.client
    }
}

fn group_id(agent: &Agent) -> Result<u64, DeliveryError> {
    match &agent.desk {
        DeskConfig::Livechat { group_id } => Ok(*group_id),
        _ => Err(DeliveryError::permanent(format!("agent {} does not use the LiveChat desk (desk.kind)", agent.id))),
    }
}

#[async_trait]
impl Desk for LivechatDesk {
    /// A user already in LiveChat (`desk.hosts(channel)`: `key.user` is their chat) is
    /// transferred to the group inside that chat (after a note for the agents); anyone else
    /// gets a chat started as their LiveChat customer, whose first message is the transcript.
    async fn open(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError> {
        let c = &self.client;
        config(agent)?;
        let group = group_id(agent)?;
        if let Some(id) = c.records.done(agent, "open", idempotency_key).await {
            return Ok(id);
        }
        let chat_id = if agent.desk.hosts(key.channel) {
            let note_key = format!("{idempotency_key}:note");
            if c.records.done(agent, "transfer-note", &note_key).await.is_none() {
                let body = json!({
                    "chat_id": key.user,
                    "event": {
                        "type": "message",
                        "text": transfer_note(request),
                        "custom_id": custom_id("note", idempotency_key),
                        "visibility": "agents",
                    },
                });
                match c.call(agent, Api::Agent, "send_event", Who::Bot, &body).await {
                    Ok(_) => c.records.mark_done(agent, "transfer-note", &note_key, "1").await,
                    Err(e @ DeliveryError::Permanent { .. }) => {
                        tracing::warn!(agent = %agent.id, error = %e, "cannot leave the handoff note in the LiveChat chat");
                    }
                    Err(e) => return Err(e),
                }
            }
            let body = json!({
                "id": key.user,
                "target": {"type": "group", "ids": [group]},
                "ignore_agents_availability": true,
                "ignore_requester_presence": true,
            });
            c.call(agent, Api::Agent, "transfer_chat", Who::Bot, &body).await?;
            key.user.clone()
        } else {
            let customer_key = key.to_string();
            let body = start_chat_body(group, key, request, idempotency_key);
            let answer = c.call(agent, Api::Customer, "start_chat", Who::Customer(&customer_key), &body).await?;
            let chat_id = answer
                .get("chat_id")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| DeliveryError::permanent("LiveChat start_chat answered without a chat_id"))?
                .to_string();
            let record = LivechatClient::chat_name(agent, &chat_id);
            if let Err(e) = c.kv.put(&record, &customer_key, Millis(c.clock.now().0 + CHAT_RECORD_MS)).await {
                tracing::warn!(agent = %agent.id, error = %e, "cannot record the LiveChat chat the hub started");
            }
            chat_id
        };
        c.records.mark_done(agent, "open", idempotency_key, &chat_id).await;
        Ok(chat_id)
    }

    /// The user's next message, as the customer (Customer Chat API `send_event`, added to the
    /// last thread should the agent have just closed the chat). Only for chats the hub started:
    /// in a transferred LiveChat chat the user writes there directly.
    async fn post(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        text: &str,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let c = &self.client;
        config(agent)?;
        if c.records.done(agent, "post", idempotency_key).await.is_some() {
            return Ok(());
        }
        let Some(customer_key) = c.chat_customer(agent, desk_conversation_id).await? else {
            return Err(DeliveryError::permanent(format!(
                "agent {}: LiveChat chat {desk_conversation_id:?} was not started by the hub; its customer writes there directly",
                agent.id
            )));
        };
        if text.trim().is_empty() {
            return Err(DeliveryError::permanent(format!("agent {}: empty message for LiveChat", agent.id)));
        }
        let body = json!({
            "chat_id": desk_conversation_id,
            "event": {
                "type": "message",
                "text": cut(text, MAX_TEXT_BYTES),
                "custom_id": custom_id("post", idempotency_key),
                "visibility": "all",
            },
            "attach_to_last_thread": true,
        });
        c.call(agent, Api::Customer, "send_event", Who::Customer(&customer_key), &body).await?;
        c.records.mark_done(agent, "post", idempotency_key, "1").await;
        Ok(())
    }

    /// Ends the chat. In a chat the hub started as the customer: a last message saying why
    /// (the user ended it, or did not reply in time), then Customer Chat API `deactivate_chat`.
    /// In a LiveChat chat of its own: Agent Chat API `deactivate_chat` (as the bot, if any). A
    /// chat that is already inactive counts as closed.
    async fn close(
        &self,
        agent: &Agent,
        desk_conversation_id: &str,
        reason: CloseReason,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        let c = &self.client;
        config(agent)?;
        if c.records.done(agent, "close", idempotency_key).await.is_some() {
            return Ok(());
        }
        let result = match c.chat_customer(agent, desk_conversation_id).await? {
            Some(customer_key) => {
                let note_key = format!("{idempotency_key}:note");
                if c.records.done(agent, "close-note", &note_key).await.is_none() {
                    let body = json!({
                        "chat_id": desk_conversation_id,
                        "event": {
                            "type": "message",
                            "text": close_note(reason),
                            "custom_id": custom_id("close", idempotency_key),
                            "visibility": "all",
                        },
                    });
                    match c.call(agent, Api::Customer, "send_event", Who::Customer(&customer_key), &body).await {
                        Ok(_) => c.records.mark_done(agent, "close-note", &note_key, "1").await,
                        Err(e @ DeliveryError::Permanent { .. }) => {
                            tracing::info!(agent = %agent.id, error = %e, "no closing note in the LiveChat chat");
                        }
                        Err(e) => return Err(e),
                    }
                }
                let body = json!({"id": desk_conversation_id});
                c.call(agent, Api::Customer, "deactivate_chat", Who::Customer(&customer_key), &body).await
            }
            None => {
                let body = json!({"id": desk_conversation_id, "ignore_requester_presence": true});
                c.call(agent, Api::Agent, "deactivate_chat", Who::Bot, &body).await
            }
        };
        match result {
            Ok(_) => {}
            Err(e) if is_chat_inactive(&e) => {
                tracing::info!(agent = %agent.id, "the LiveChat chat was already closed");
            }
            Err(e) => return Err(e),
        }
        c.records.mark_done(agent, "close", idempotency_key, "1").await;
        Ok(())
    }

    /// The agent's access token, the bot's token when a bot is configured, then one cheap
    /// authenticated call (Agent Chat API `list_chats` with `limit: 1`).
    async fn probe(&self, agent: &Agent) -> (ServiceStatus, String) {
        let c = &self.client;
        let Some(cfg) = agent.livechat.as_ref() else {
            return (ServiceStatus::NotConfigured, "no [livechat] section: LiveChat is not configured".into());
        };
        if let Err(e) = c.auth.agent(&agent.id, cfg).await {
            return (ServiceStatus::Unavailable, e.to_string());
        }
        if bot_credentials(cfg).is_some() {
            if let Err(e) = c.auth.bot(&agent.id, cfg).await {
                return (ServiceStatus::Unavailable, e.to_string());
            }
        }
        match c.call(agent, Api::Agent, "list_chats", Who::Agent, &json!({"limit": 1})).await {
            Ok(_) => (
                ServiceStatus::Available,
                format!(
                    "LiveChat organization {:?} answered at {}",
                    cfg.organization_id.trim(),
                    redact_url(cfg.api_base.trim())
                ),
            ),
            Err(e) => (ServiceStatus::Unavailable, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::model::{Button, Channel, Role, Turn};

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
    fn transcripts_keep_the_newest_lines_within_the_limit() {
        let key = ConversationKey::new("shop", Channel::Telegram, "42").unwrap();
        let turns = vec![
            Turn { role: Role::User, text: "hello".into(), at: Millis(1) },
            Turn { role: Role::Bot, text: "Hi! How can I help?".into(), at: Millis(2) },
            Turn { role: Role::System, text: "internal".into(), at: Millis(3) },
        ];
        assert_eq!(
            transcript(&key, &request(turns)),
            "Reason: user asked for a human\n\nEarlier messages:\nUser: hello\nBot: Hi! How can I help?\n\n\
             Question: Where is my refund?\n\nE-mail: ann@example.com\nChannel: telegram"
        );
        let many: Vec<Turn> = (0..200)
            .map(|i| Turn { role: Role::User, text: format!("message {i} {}", "x".repeat(60)), at: Millis(i) })
            .collect();
        let t = transcript(&key, &request(many));
        assert!(t.chars().count() <= MAX_TRANSCRIPT_CHARS && t.len() <= MAX_TEXT_BYTES);
        assert!(t.contains("message 199") && !t.contains("message 0 ") && t.contains("Earlier messages:\n…\n"));
        let mut no_mail = request(vec![]);
        no_mail.email = " ".into();
        assert!(transcript(&key, &no_mail).contains("E-mail: (none)"));
    }

    #[test]
    fn bodies() {
        let key = ConversationKey::new("shop", Channel::Line, "U1").unwrap();
        let b = start_chat_body(7, &key, &request(vec![]), "idem-1");
        assert_eq!(b["chat"]["access"]["group_ids"], json!([7]));
        assert_eq!(b["continuous"], true);
        let ev = &b["chat"]["thread"]["events"][0];
        assert_eq!(ev["type"], "message");
        assert!(ev["text"].as_str().unwrap().contains("Where is my refund?"));
        assert!(ev["custom_id"].as_str().unwrap().starts_with(CUSTOM_ID_PREFIX));
        let note = transfer_note(&request(vec![]));
        assert!(note.contains("Reason: user asked for a human") && note.contains("E-mail: ann@example.com"));
        assert_ne!(close_note(CloseReason::Timeout), close_note(CloseReason::UserClosed));
    }

    #[test]
    fn buttons_become_lines() {
        let mut m = OutMessage::new(Role::System, "Still there? Choose: End");
        m.buttons = vec![
            Button { label: "End".into(), value: "end".into() },
            Button { label: "Keep waiting".into(), value: "wait".into() },
        ];
        assert_eq!(render(&m), "Still there? Choose: End\n• Keep waiting");
    }
}
