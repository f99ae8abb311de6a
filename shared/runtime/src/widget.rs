//! The web widget channel: signed conversation tokens and the message log the widget reads
//! (cursor polling or a live stream). The sender that appends to it is in [`crate::channels`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::sync::Arc;

use async_trait::async_trait;
pub use baton_core::ports::{LivePush, LoggedMessage, MessageLog};
use baton_core::ConversationKey;
use tokio::sync::broadcast;

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

/// In one process the live streams subscribe to a broadcast channel.
pub struct LiveStreams(pub broadcast::Sender<Posted>);

#[async_trait]
impl LivePush for LiveStreams {
    async fn push(&self, key: &ConversationKey, message: &LoggedMessage) {
        // No live subscriber is fine: the message waits in the log.
        let _ = self.0.send(Posted { conversation: key.to_string(), message: message.clone() });
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
