//! Downloading what users send that is not text (photos, voice notes, files) from channels
//! whose files can only be read with the bot's credentials (Telegram, LINE, WhatsApp). The
//! hub hands the desk a signed link to itself instead (see the runtime's `media` module);
//! following it fetches the file through here. Nothing is stored.

use crate::outbound::{quote, transport_error};
use baton_core::ports::DeliveryError;
use std::time::Duration;

/// Largest file passed on. API Gateway caps a Lambda response at 6 MB and binary bodies grow
/// by a third in base64, so 4 MiB is what fits on both deployments.
pub const MAX_MEDIA_BYTES: usize = 4 * 1024 * 1024;

/// One downloaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// As the provider named it; `None` when it did not.
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// Whether `id` is safe as one path segment of a media link and of a provider URL: 1-256 of
/// `A-Z a-z 0-9 _ -` (Telegram file ids, LINE message ids and WhatsApp media ids all are).
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn too_large(what: &str, size: u64) -> DeliveryError {
    DeliveryError::permanent(format!(
        "{what}: the file has {size} bytes, more than the {MAX_MEDIA_BYTES} bytes the hub passes on; open it in the provider's app"
    ))
}

/// GET a file (the request is built by the caller, with its credentials): at most
/// [`MAX_MEDIA_BYTES`], by the declared length and by what actually arrives. Errors say what
/// failed; the caller scrubs its own credentials from them.
pub(crate) async fn download(
    request: reqwest::RequestBuilder,
    what: &str,
    timeout: Duration,
) -> Result<Fetched, DeliveryError> {
    let mut resp = request.timeout(timeout).send().await.map_err(|e| transport_error(what, timeout, e))?;
    let status = resp.status();
    if !status.is_success() {
        let body = crate::outbound::read_limited(resp, 512).await;
        let detail = String::from_utf8_lossy(&body);
        let message = format!("{what} answered HTTP {}: {}", status.as_u16(), quote(detail.trim()));
        return Err(match status.as_u16() {
            401 | 403 => DeliveryError::Unauthorized { message },
            429 | 500..=599 => DeliveryError::retryable(message),
            _ => DeliveryError::permanent(message),
        });
    }
    if let Some(len) = resp.content_length().filter(|n| *n > MAX_MEDIA_BYTES as u64) {
        return Err(too_large(what, len));
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_MEDIA_BYTES {
                    return Err(too_large(what, (bytes.len() + chunk.len()) as u64));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(transport_error(what, timeout, e)),
        }
    }
    Ok(Fetched { content_type, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_single_safe_path_segments() {
        for ok in ["AgACAgIAAxkBAAIBZ2Vk-_x", "325708", "1479537139650973"] {
            assert!(valid_media_id(ok), "{ok}");
        }
        for bad in ["", "a/b", "..", "a b", "a?b=1", "é", &"x".repeat(257)] {
            assert!(!valid_media_id(bad), "{bad}");
        }
    }
}
