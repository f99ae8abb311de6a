//! The web widget channel: signed conversation tokens, the message log the widget reads
//! (cursor polling or a live stream), and the sender that appends to it.

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use baton_core::ports::{ChannelSender, DeliveryError};
use baton_core::{Agent, Channel, ConversationKey, OutMessage};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::sync::Arc;
use tokio::sync::broadcast;

pub use baton_core::ports::{LoggedMessage, MessageLog};

/// Signs widget conversation tokens: `{user id}.{HMAC-SHA256(secret, agent|user)}`.
/// Knowing a conversation id is not enough to read it; the token is.
#[derive(Clone)]
pub struct TokenSigner {
    key: Arc<Vec<u8>>,
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        TokenSigner { key: Arc::new(secret.to_vec()) }
    }

    fn mac(&self, agent: &str, user: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        m.update(b"widget|");
        m.update(agent.as_bytes());
        m.update(b"|");
        m.update(user.as_bytes());
        m
    }

    /// A fresh random widget user and its token.
    pub fn issue(&self, agent: &str) -> (String, String) {
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        let user = format!("w{}", hex::encode(b));
        let token = self.token_for(agent, &user);
        (user, token)
    }

    pub fn token_for(&self, agent: &str, user: &str) -> String {
        let sig = self.mac(agent, user).finalize().into_bytes();
        format!("{user}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The widget user id when `token` is valid for `agent`.
    pub fn verify(&self, agent: &str, token: &str) -> Option<String> {
        let (user, sig) = token.rsplit_once('.')?;
        if user.is_empty() || user.len() > 64 || !user.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.mac(agent, user).verify_slice(&sig).ok()?;
        Some(user.to_string())
    }
}

/// A new message for a widget conversation, for live streams.
#[derive(Debug, Clone)]
pub struct Posted {
    pub conversation: String,
    pub message: LoggedMessage,
}

/// Sends to the user's channel. The widget's messages go to the log and to live streams;
/// other channels come with their connectors.
pub struct ChannelRouter {
    pub log: Arc<dyn MessageLog>,
    pub live: broadcast::Sender<Posted>,
    pub clock: Arc<dyn baton_core::ports::Clock>,
}

#[async_trait]
impl ChannelSender for ChannelRouter {
    async fn send(
        &self,
        _agent: &Agent,
        key: &ConversationKey,
        message: &OutMessage,
        idempotency_key: &str,
    ) -> Result<(), DeliveryError> {
        match key.channel {
            Channel::Widget | Channel::Api => {
                let at = self.clock.now();
                let seq = self
                    .log
                    .append(key, idempotency_key, message, at)
                    .await
                    .map_err(|e| DeliveryError::retryable(e.to_string()))?;
                if let Some(seq) = seq {
                    // No live subscriber is fine: the message waits in the log.
                    let _ = self.live.send(Posted {
                        conversation: key.to_string(),
                        message: LoggedMessage { seq, at, message: message.clone() },
                    });
                }
                Ok(())
            }
            other => {
                Err(DeliveryError::permanent(format!("channel {} is not connected in this build", other.as_str())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_agent_and_user() {
        let s = TokenSigner::new(b"secret-one");
        let (user, token) = s.issue("demo");
        assert_eq!(s.verify("demo", &token), Some(user.clone()));
        assert_eq!(s.verify("other", &token), None);
        assert_eq!(TokenSigner::new(b"secret-two").verify("demo", &token), None);
        let forged = format!("{}x.{}", user, token.rsplit_once('.').unwrap().1);
        assert_eq!(s.verify("demo", &forged), None);
        assert_eq!(s.verify("demo", "garbage"), None);
        assert_eq!(s.verify("demo", "a.b.c"), None);
    }
}
