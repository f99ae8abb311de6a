//! The user's side: one [`ChannelRouter`] sends every `SendToUser` effect to the channel of
//! its conversation, and the inbound conversions turn each channel's parsed webhook (or
//! polled update) into canonical events with the provider's own id for deduplication.

use crate::media::LinkBase;
use crate::widget::{LivePush, LoggedMessage, MessageLog};
use async_trait::async_trait;
use baton_connectors::agent_api::ConverseWebhook;
use baton_connectors::intercom::IntercomClient;
use baton_connectors::line::{self, LineClient};
use baton_connectors::livechat::LivechatClient;
use baton_connectors::salesiq::api::SalesiqClient;
use baton_connectors::telegram::{self, TelegramClient};
use baton_connectors::whatsapp::{self, WhatsappClient};
use baton_core::event::ReplyHandle;
use baton_core::ports::{ChannelSender, Clock, Delivery, DeliveryError};
use baton_core::{Agent, Channel, ConversationKey, Event, EventKind, Millis, OutMessage};
use std::sync::Arc;

/// How long after a LINE event its reply token is used; LINE only says "a certain period"
/// (about a minute in practice), so the hub stays well inside it and pushes afterwards.
pub const LINE_REPLY_WINDOW_MS: i64 = 50_000;

/// Sends to the user's channel: the widget's messages go to the log and to the widgets
/// reading live, the others to their provider's API.
pub struct ChannelRouter {
    pub log: Arc<dyn MessageLog>,
    pub live: Arc<dyn LivePush>,
    pub clock: Arc<dyn Clock>,
    pub telegram: TelegramClient,
    pub line: LineClient,
    pub salesiq: SalesiqClient,
    pub intercom: IntercomClient,
    pub livechat: LivechatClient,
    pub whatsapp: WhatsappClient,
    /// The Agent API's converse webhook.
    pub api: ConverseWebhook,
}

fn not_configured(agent: &Agent, channel: &str) -> DeliveryError {
    DeliveryError::permanent(format!("agent {} has no {channel} channel configured", agent.id))
}

#[async_trait]
impl ChannelSender for ChannelRouter {
    async fn send(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        message: &OutMessage,
        delivery: &Delivery<'_>,
    ) -> Result<(), DeliveryError> {
        let idempotency_key = delivery.idempotency_key;
        match key.channel {
            Channel::Widget | Channel::Api => {
                // API conversations are logged too: the synchronous mode and the console read them.
                let at = self.clock.now();
                let seq = self
                    .log
                    .append(key, idempotency_key, message, at, agent.policy.keep_until(at))
                    .await
                    .map_err(|e| DeliveryError::retryable(e.to_string()))?;
                if let Some(seq) = seq {
                    let logged = LoggedMessage { id: idempotency_key.to_string(), seq, at, message: message.clone() };
                    self.live.push(key, &logged).await;
                }
                match (key.channel, agent.api.as_ref().and_then(|a| a.converse_url.as_deref())) {
                    (Channel::Api, Some(url)) => {
                        self.api.deliver(agent, url, &key.user, message, idempotency_key).await
                    }
                    _ => Ok(()),
                }
            }
            Channel::Telegram => {
                let cfg = agent.channels.telegram.as_ref().ok_or_else(|| not_configured(agent, "telegram"))?;
                self.telegram.send(cfg, &key.user, message).await
            }
            Channel::Line => {
                let cfg = agent.channels.line.as_ref().ok_or_else(|| not_configured(agent, "LINE"))?;
                self.line.send(cfg, &key.user, message, delivery.reply_token, idempotency_key).await
            }
            Channel::Salesiq => self.salesiq.post_as_operator(agent, &key.user, message, idempotency_key).await,
            Channel::Whatsapp => {
                let cfg = agent.channels.whatsapp.as_ref().ok_or_else(|| not_configured(agent, "WhatsApp"))?;
                self.whatsapp.send(cfg, &key.user, message, delivery.outside_window).await
            }
            Channel::Intercom => self.intercom.reply_as_bot(agent, &key.user, message, idempotency_key).await,
            Channel::Livechat => self.livechat.send_as_bot(agent, &key.user, message, idempotency_key).await,
        }
    }

    async fn team_online(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        idempotency_key: &str,
    ) -> Result<bool, DeliveryError> {
        match (key.channel, agent.api.as_ref().and_then(|a| a.converse_url.as_deref())) {
            (Channel::Api, Some(url)) => self.api.team_online(agent, url, &key.user, idempotency_key).await,
            _ => Err(DeliveryError::permanent(format!("agent {} has no api.converse_url to ask", agent.id))),
        }
    }
}

/// `placeholder` followed by the link to its file, when there is one.
fn with_link(placeholder: String, link: Option<String>) -> String {
    match link {
        Some(link) => format!("{placeholder} {link}"),
        None => placeholder,
    }
}

/// The canonical event of one Telegram update (webhook or `getUpdates`), deduplicated on
/// `update_id`. Buttons come back as their value; files as a placeholder naming what was sent
/// with a link to it, other kinds as a placeholder, so the human sees that something arrived.
pub fn telegram_event(agent: &str, update: &telegram::Inbound, now: Millis, links: &LinkBase<'_>) -> Option<Event> {
    let key = ConversationKey::new(agent, Channel::Telegram, &update.chat_id).ok()?;
    let text = match &update.kind {
        telegram::InboundKind::Text(t) | telegram::InboundKind::Button(t) => t.clone(),
        telegram::InboundKind::Media { file_id, .. } => {
            with_link(telegram::describe(&update.kind), links.to(agent, Channel::Telegram, file_id))
        }
        other => telegram::describe(other),
    };
    let kind = EventKind::UserMessage {
        text,
        email: None,
        language: update.language.clone(),
        name: update.user_name.clone(),
        reply: None,
    };
    Some(Event::new(baton_core::event::telegram_event_id(agent, update.update_id), key, now, kind))
}

/// The canonical event of one LINE webhook event, deduplicated on `webhookEventId`. The
/// reply token is kept while fresh, counted from the event's own time (a redelivered event
/// arrives with its original time and so is answered by push).
pub fn line_event(agent: &str, ev: &line::Inbound, now: Millis, links: &LinkBase<'_>) -> Option<Event> {
    let key = ConversationKey::new(agent, Channel::Line, &ev.user_id).ok()?;
    let text = match &ev.kind {
        line::InboundKind::Text(t) | line::InboundKind::Button(t) => t.clone(),
        // Content the sender hosts is linked as it is; LINE's own through the hub.
        line::InboundKind::Media { external_url: Some(url), .. } => {
            with_link(line::describe(&ev.kind), Some(url.clone()))
        }
        line::InboundKind::Media { message_id, .. } => {
            with_link(line::describe(&ev.kind), links.to(agent, Channel::Line, message_id))
        }
        other => line::describe(other),
    };
    let reply = ev.reply_token.as_ref().map(|token| ReplyHandle {
        token: token.clone(),
        valid_until: Millis(ev.timestamp.saturating_add(LINE_REPLY_WINDOW_MS)),
    });
    let kind = EventKind::UserMessage { text, email: None, language: None, reply, name: None };
    Some(Event::new(format!("line:{agent}:{}", ev.webhook_event_id), key, now, kind))
}

/// The canonical event of one WhatsApp message, deduplicated on its wamid (Meta redelivers
/// for hours). A pressed button is its value; media become a placeholder with a link to the
/// file, locations and other kinds a placeholder that says what was sent.
pub fn whatsapp_event(agent: &str, msg: &whatsapp::Inbound, now: Millis, links: &LinkBase<'_>) -> Option<Event> {
    let key = ConversationKey::new(agent, Channel::Whatsapp, &msg.from).ok()?;
    let text = match &msg.kind {
        whatsapp::InboundKind::Text(t) | whatsapp::InboundKind::Button(t) => t.clone(),
        whatsapp::InboundKind::Media { id, .. } => {
            with_link(whatsapp::describe(&msg.kind), links.to(agent, Channel::Whatsapp, id))
        }
        other => whatsapp::describe(other),
    };
    let kind = EventKind::UserMessage { text, email: None, language: None, name: msg.name.clone(), reply: None };
    Some(Event::new(format!("wa:{agent}:{}", msg.message_id), key, now, kind))
}
