//! Links to files users send on channels whose files need the bot's credentials (Telegram,
//! LINE, WhatsApp). The placeholder a desk sees for a photo or a voice note carries a signed,
//! expiring link to `/media/{agent}/{channel}/{id}` on the hub; following it makes the hub
//! fetch the file with the agent's credentials and pass it on. The link is the only
//! capability (HMAC-SHA256 with the deployment's secret, domain-separated from widget
//! tokens); nothing is stored.

use baton_connectors::media::{valid_media_id, Fetched};
use baton_connectors::{line::LineClient, telegram::TelegramClient, whatsapp::WhatsappClient};
use baton_core::ports::DeliveryError;
use baton_core::{Agent, Channel, Millis};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// How long a media link works: long enough for a desk to open it days later, short enough
/// that a leaked link does not stay useful, and as long as WhatsApp keeps a webhook's media.
pub const MEDIA_LINK_TTL_SECS: i64 = 7 * 24 * 3600;

/// Signs and checks media links.
#[derive(Clone)]
pub struct MediaLinks {
    key: Arc<Vec<u8>>,
    /// The hub's public URL when configured (`BATON_PUBLIC_URL`); otherwise links point at
    /// the host the provider's webhook reached.
    public_base: Option<String>,
}

/// Why a link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    Invalid,
    Expired,
}

impl MediaLinks {
    pub fn new(secret: &[u8], public_base: Option<String>) -> Self {
        let public_base = public_base.map(|b| b.trim().trim_end_matches('/').to_string()).filter(|b| !b.is_empty());
        MediaLinks { key: Arc::new(secret.to_vec()), public_base }
    }

    pub fn public_base(&self) -> Option<&str> {
        self.public_base.as_deref()
    }

    fn mac(&self, agent: &str, channel: Channel, id: &str, exp: i64) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        m.update(format!("media|{agent}|{}|{id}|{exp}", channel.as_str()).as_bytes());
        m
    }

    /// `{base}/media/{agent}/{channel}/{id}?exp=..&sig=..`, or `None` for an id that cannot be
    /// a path segment (the placeholder then names the id without a link).
    pub fn link(&self, base: &str, agent: &str, channel: Channel, id: &str, now: Millis) -> Option<String> {
        if !valid_media_id(id) {
            return None;
        }
        let exp = now.0 / 1000 + MEDIA_LINK_TTL_SECS;
        let sig = hex::encode(self.mac(agent, channel, id, exp).finalize().into_bytes());
        let base = base.trim_end_matches('/');
        Some(format!("{base}/media/{agent}/{}/{id}?exp={exp}&sig={sig}", channel.as_str()))
    }

    /// Check a link's signature (constant time) and expiry.
    pub fn verify(
        &self,
        agent: &str,
        channel: Channel,
        id: &str,
        exp: i64,
        sig: &str,
        now: Millis,
    ) -> Result<(), LinkError> {
        let Ok(sig) = hex::decode(sig.trim()) else { return Err(LinkError::Invalid) };
        self.mac(agent, channel, id, exp).verify_slice(&sig).map_err(|_| LinkError::Invalid)?;
        if now.0 / 1000 > exp {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

impl MediaLinks {
    /// The base for links in a webhook's placeholders: the configured public URL, else the
    /// host the provider reached (`X-Forwarded-Proto`, else `http` for a loopback host and
    /// `https` otherwise). `None` without a usable `Host`.
    pub fn base_for(&self, headers: &axum::http::HeaderMap) -> Option<String> {
        if let Some(base) = &self.public_base {
            return Some(base.clone());
        }
        let header = |name: axum::http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let host = header(axum::http::header::HOST).filter(|h| valid_host(h))?;
        let loopback =
            ["127.0.0.1", "localhost", "[::1]"].iter().any(|l| host == *l || host.starts_with(&format!("{l}:")));
        let scheme = match headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).map(str::trim) {
            Some("http") => "http",
            Some("https") => "https",
            _ if loopback => "http",
            _ => "https",
        };
        Some(format!("{scheme}://{host}"))
    }
}

/// A `Host` header that can only name a host (and port): no path, query or user part.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Media links and the fetching behind them, as the HTTP routes use them.
#[derive(Clone)]
pub struct MediaFiles {
    pub links: MediaLinks,
    pub fetcher: MediaFetcher,
}

/// Where the links of one inbound batch point, and when they were made.
pub struct LinkBase<'a> {
    pub links: &'a MediaLinks,
    /// `None`: no public address is known, so placeholders carry ids, not links.
    pub base: Option<String>,
    pub now: Millis,
}

impl LinkBase<'_> {
    pub fn to(&self, agent: &str, channel: Channel, id: &str) -> Option<String> {
        self.links.link(self.base.as_deref()?, agent, channel, id, self.now)
    }
}

/// Fetches a linked file from its channel with the agent's credentials.
#[derive(Clone)]
pub struct MediaFetcher {
    pub telegram: TelegramClient,
    pub line: LineClient,
    pub whatsapp: WhatsappClient,
}

impl MediaFetcher {
    /// `agent` with its secrets resolved.
    pub async fn fetch(&self, agent: &Agent, channel: Channel, id: &str) -> Result<Fetched, DeliveryError> {
        let missing = |name: &str| DeliveryError::permanent(format!("agent {} has no {name} channel", agent.id));
        match channel {
            Channel::Telegram => {
                let cfg = agent.channels.telegram.as_ref().ok_or_else(|| missing("Telegram"))?;
                self.telegram.fetch_file(cfg, id).await
            }
            Channel::Line => {
                let cfg = agent.channels.line.as_ref().ok_or_else(|| missing("LINE"))?;
                self.line.fetch_content(cfg, id).await
            }
            Channel::Whatsapp => {
                let cfg = agent.channels.whatsapp.as_ref().ok_or_else(|| missing("WhatsApp"))?;
                self.whatsapp.fetch_media(cfg, id).await
            }
            other => Err(DeliveryError::permanent(format!("the {} channel has no media links", other.as_str()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = Millis(1_795_082_400_000);

    fn parts(link: &str) -> (String, i64, String) {
        let (path, query) = link.split_once('?').unwrap();
        let id = path.rsplit('/').next().unwrap().to_string();
        let mut exp = 0;
        let mut sig = String::new();
        for kv in query.split('&') {
            match kv.split_once('=').unwrap() {
                ("exp", v) => exp = v.parse().unwrap(),
                ("sig", v) => sig = v.to_string(),
                _ => {}
            }
        }
        (id, exp, sig)
    }

    #[test]
    fn a_link_opens_its_own_file_until_it_expires() {
        let links = MediaLinks::new(b"deployment-secret", None);
        let link = links.link("https://hub.example.com/", "shop", Channel::Whatsapp, "1479537139650973", NOW).unwrap();
        assert!(link.starts_with("https://hub.example.com/media/shop/whatsapp/1479537139650973?exp="), "{link}");
        let (id, exp, sig) = parts(&link);
        assert_eq!(links.verify("shop", Channel::Whatsapp, &id, exp, &sig, NOW), Ok(()));
        let later = Millis(NOW.0 + (MEDIA_LINK_TTL_SECS + 1) * 1000);
        assert_eq!(links.verify("shop", Channel::Whatsapp, &id, exp, &sig, later), Err(LinkError::Expired));
        // Another file, agent, channel, a later expiry or another deployment's key: refused.
        assert_eq!(
            links.verify("shop", Channel::Whatsapp, "1479537139650974", exp, &sig, NOW),
            Err(LinkError::Invalid)
        );
        assert_eq!(links.verify("other", Channel::Whatsapp, &id, exp, &sig, NOW), Err(LinkError::Invalid));
        assert_eq!(links.verify("shop", Channel::Line, &id, exp, &sig, NOW), Err(LinkError::Invalid));
        assert_eq!(links.verify("shop", Channel::Whatsapp, &id, exp + 86_400, &sig, NOW), Err(LinkError::Invalid));
        let other = MediaLinks::new(b"another-secret", None);
        assert_eq!(other.verify("shop", Channel::Whatsapp, &id, exp, &sig, NOW), Err(LinkError::Invalid));
        assert_eq!(links.verify("shop", Channel::Whatsapp, &id, exp, "zz", NOW), Err(LinkError::Invalid));
    }

    #[test]
    fn links_point_at_the_configured_url_or_the_host_the_provider_reached() {
        use axum::http::{HeaderMap, HeaderValue};
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let links = MediaLinks::new(b"k", None);
        let api = headers(&[("host", "abc123.execute-api.eu-west-1.amazonaws.com"), ("x-forwarded-proto", "https")]);
        assert_eq!(links.base_for(&api).as_deref(), Some("https://abc123.execute-api.eu-west-1.amazonaws.com"));
        assert_eq!(links.base_for(&headers(&[("host", "127.0.0.1:8787")])).as_deref(), Some("http://127.0.0.1:8787"));
        assert_eq!(
            links.base_for(&headers(&[("host", "hub.example.com")])).as_deref(),
            Some("https://hub.example.com")
        );
        assert_eq!(links.base_for(&headers(&[("host", "evil.com/x?")])), None);
        assert_eq!(links.base_for(&HeaderMap::new()), None);
        let configured = MediaLinks::new(b"k", Some("https://baton.example.com".into()));
        assert_eq!(configured.base_for(&api).as_deref(), Some("https://baton.example.com"));
    }

    #[test]
    fn ids_that_are_not_one_path_segment_get_no_link() {
        let links = MediaLinks::new(b"k", Some("https://hub.example.com/".into()));
        assert_eq!(links.public_base(), Some("https://hub.example.com"));
        assert_eq!(links.link("https://h", "shop", Channel::Telegram, "../x", NOW), None);
        let base = LinkBase { links: &links, base: None, now: NOW };
        assert_eq!(base.to("shop", Channel::Telegram, "abc"), None, "no known address, no link");
    }
}
