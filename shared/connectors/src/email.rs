//! The e-mail fallback: when no human can take a request, the team gets it by e-mail over
//! SMTP (lettre, on the same rustls stack as every other connector), or, for local use, as an
//! `.eml` file written into `capture_dir`.
//!
//! SMTP has no idempotency key: the `Message-ID` is derived from the effect's idempotency key,
//! so a message sent again after a lost answer is recognisably the same one. The SMTP URL holds
//! the password; it never appears in an error or a log line.

use crate::transcript::{cut_chars, transcript, Style};
use async_trait::async_trait;
use baton_core::agent::{Agent, FallbackConfig};
use baton_core::effect::HandoffRequest;
use baton_core::model::ConversationKey;
use baton_core::ports::{DeliveryError, Fallback};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// What the user is told (`We have passed your request on (...)`).
pub const DETAIL: &str = "by e-mail to our team";

pub struct EmailFallback {
    timeout: Duration,
}

impl EmailFallback {
    pub fn new(timeout: Duration) -> Self {
        EmailFallback { timeout }
    }
}

fn mailbox(field: &str, address: &str) -> Result<Mailbox, DeliveryError> {
    address.trim().parse().map_err(|e| DeliveryError::permanent(format!("fallback.{field}: {address:?}: {e}")))
}

/// The message for the team. `Reply-To` is the user when they gave their own address.
pub fn message(
    agent: &Agent,
    key: &ConversationKey,
    request: &HandoffRequest,
    from: &str,
    to: &[String],
    idempotency_key: &str,
) -> Result<Message, DeliveryError> {
    let domain = from.rsplit_once('@').map(|(_, d)| d.trim()).unwrap_or("baton.invalid");
    let id: String =
        idempotency_key.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')).collect();
    let mut builder =
        Message::builder().message_id(Some(format!("<{id}@{domain}>"))).from(mailbox("from", from)?).subject(format!(
            "{}: a {} user needs a person: {}",
            agent.name,
            key.channel.as_str(),
            cut_chars(request.question.trim(), 80).replace(['\r', '\n'], " ")
        ));
    for (i, address) in to.iter().enumerate() {
        builder = builder.to(mailbox(&format!("to[{i}]"), address)?);
    }
    let user = request.email.trim();
    if !user.is_empty() && !user.eq_ignore_ascii_case(agent.policy.default_email.trim()) {
        if let Ok(reply_to) = user.parse::<Mailbox>() {
            builder = builder.reply_to(reply_to);
        }
    }
    let style = Style {
        intro: "No colleague could take this conversation, so it is passed on by e-mail.",
        bot: "Assistant",
        max_chars: 20_000,
        question_chars: 4000,
        line_chars: 2000,
        no_email: "(none given)",
    };
    let body =
        format!("{}\n\nAgent: {} ({})\nConversation: {key}\n", transcript(key, request, &style), agent.name, agent.id);
    builder
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| DeliveryError::permanent(format!("the fallback e-mail cannot be built: {e}")))
}

/// `s` without the SMTP URL's user information (a last guard; lettre does not echo it).
fn scrub(s: String, smtp_url: &str) -> String {
    let userinfo = smtp_url.split_once("://").and_then(|(_, rest)| rest.split_once('@')).map(|(u, _)| u);
    match userinfo.filter(|u| u.len() >= 3) {
        Some(u) => s.replace(u, "***"),
        None => s,
    }
}

fn smtp_error(e: lettre::transport::smtp::Error, smtp_url: &str) -> DeliveryError {
    let message = scrub(format!("SMTP: {e}"), smtp_url);
    let code = e.status().map(|c| c.to_string());
    if matches!(code.as_deref(), Some("530" | "534" | "535")) {
        DeliveryError::Unauthorized { message }
    } else if e.is_permanent() {
        DeliveryError::permanent(message)
    } else {
        // 4xx, connection, TLS and timeouts: the server may take it later.
        DeliveryError::retryable(message)
    }
}

#[async_trait]
impl Fallback for EmailFallback {
    async fn escalate(
        &self,
        agent: &Agent,
        key: &ConversationKey,
        request: &HandoffRequest,
        idempotency_key: &str,
    ) -> Result<String, DeliveryError> {
        let FallbackConfig::Email { smtp_url, capture_dir, from, to } = &agent.fallback else {
            return Err(DeliveryError::permanent(format!("agent {} has no e-mail fallback", agent.id)));
        };
        let email = message(agent, key, request, from, to, idempotency_key)?;
        if let Some(dir) = capture_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| DeliveryError::retryable(format!("fallback.capture_dir {dir:?}: {e}")))?;
            let transport = AsyncFileTransport::<Tokio1Executor>::new(dir);
            transport
                .send(email)
                .await
                .map_err(|e| DeliveryError::retryable(format!("fallback.capture_dir {dir:?}: {e}")))?;
            return Ok(DETAIL.into());
        }
        let Some(url) = smtp_url else {
            return Err(DeliveryError::permanent(format!("agent {}: fallback.smtp_url is not set", agent.id)));
        };
        let url = url.expose();
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| DeliveryError::permanent(scrub(format!("fallback.smtp_url: {e}"), url)))?
            .timeout(Some(self.timeout))
            .build();
        transport.send(email).await.map_err(|e| smtp_error(e, url))?;
        Ok(DETAIL.into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_smtp_password_is_scrubbed() {
        let url = "smtps://baton:s3cret-pass@smtp.example.com:465";
        assert_eq!(super::scrub(format!("failed at {url}"), url), "failed at smtps://***@smtp.example.com:465");
        assert_eq!(super::scrub("x".into(), "smtp://smtp.example.com"), "x");
    }
}
