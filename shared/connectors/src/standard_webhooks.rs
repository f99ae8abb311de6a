//! Standard Webhooks (v1, symmetric): sign what we send to a desk and verify what a desk sends
//! us, so both sides can prove a call came from the holder of the shared `whsec_` secret.
//!
//! Signed string: `"{webhook-id}.{webhook-timestamp}.{raw body}"`, HMAC-SHA256 keyed with the
//! base64-decoded part of the secret after `whsec_`. The `webhook-signature` header is a
//! space-separated list of `v1,<base64>` entries (several during key rotation); any match passes.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of a serialized symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest accepted key. The spec asks for 24–64 random bytes; 16 is accepted so that short
/// hand-made test keys work. [`generate_secret`] always makes 32 bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// How far `webhook-timestamp` may be from now, either way (the reference libraries use 5 minutes).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Why a `whsec_` secret cannot be used. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("signing secret must start with whsec_")]
    MissingPrefix,
    #[error("signing secret is not valid base64 after whsec_")]
    InvalidBase64,
    #[error("signing secret key is {len} bytes; at least {MIN_KEY_BYTES} are required")]
    TooShort { len: usize },
}

/// Why a signed request is rejected. Never contains the secret or the expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not an integer number of seconds")]
    InvalidTimestamp,
    #[error("webhook-timestamp is too old")]
    TimestampTooOld,
    #[error("webhook-timestamp is too far in the future")]
    TimestampTooNew,
    #[error("webhook-signature has no v1 signature")]
    NoSignature,
    #[error("no webhook-signature matches")]
    SignatureMismatch,
}

/// The three Standard Webhooks headers of one request, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

impl<'a> WebhookHeaders<'a> {
    /// Read `webhook-*` headers, falling back to the `svix-*` names Svix also sends.
    pub fn from_header_map(headers: &'a reqwest::header::HeaderMap) -> Result<Self, VerifyError> {
        fn get<'h>(
            headers: &'h reqwest::header::HeaderMap,
            name: &'static str,
            alias: &'static str,
        ) -> Result<&'h str, VerifyError> {
            headers
                .get(name)
                .or_else(|| headers.get(alias))
                .and_then(|v| v.to_str().ok())
                .ok_or(VerifyError::MissingHeader(name))
        }
        Ok(WebhookHeaders {
            id: get(headers, HEADER_ID, "svix-id")?,
            timestamp: get(headers, HEADER_TIMESTAMP, "svix-timestamp")?,
            signature: get(headers, HEADER_SIGNATURE, "svix-signature")?,
        })
    }
}

/// A parsed symmetric signing secret. `Debug` does not show the key.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

impl std::str::FromStr for SigningSecret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SigningSecret::parse(s)
    }
}

impl SigningSecret {
    /// Parse `whsec_<base64>`. The key must decode to at least [`MIN_KEY_BYTES`] bytes.
    pub fn parse(serialized: &str) -> Result<Self, SecretError> {
        let encoded = serialized.trim().strip_prefix(SECRET_PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = B64.decode(encoded).map_err(|_| SecretError::InvalidBase64)?;
        if key.len() < MIN_KEY_BYTES {
            return Err(SecretError::TooShort { len: key.len() });
        }
        Ok(SigningSecret { key })
    }

    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value for one request: `v1,<base64 HMAC-SHA256>`.
    pub fn sign(&self, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, &timestamp_secs.to_string(), body).finalize().into_bytes();
        format!("v1,{}", B64.encode(tag))
    }

    /// Verify with the default tolerance of [`DEFAULT_TOLERANCE_SECS`].
    pub fn verify(&self, headers: &WebhookHeaders<'_>, body: &[u8], now_secs: i64) -> Result<(), VerifyError> {
        self.verify_with_tolerance(headers, body, now_secs, DEFAULT_TOLERANCE_SECS)
    }

    /// Check the timestamp against `now_secs ± tolerance_secs`, then compare the expected
    /// signature in constant time with every `v1,` entry of the signature header.
    pub fn verify_with_tolerance(
        &self,
        headers: &WebhookHeaders<'_>,
        body: &[u8],
        now_secs: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
        if headers.id.is_empty() {
            return Err(VerifyError::MissingHeader(HEADER_ID));
        }
        let ts_text = headers.timestamp.trim();
        let ts: i64 = ts_text.parse().map_err(|_| VerifyError::InvalidTimestamp)?;
        if ts < now_secs.saturating_sub(tolerance_secs) {
            return Err(VerifyError::TimestampTooOld);
        }
        if ts > now_secs.saturating_add(tolerance_secs) {
            return Err(VerifyError::TimestampTooNew);
        }
        // Sign the timestamp as it was sent: it is part of the signed string.
        let expected = self.mac(headers.id, ts_text, body).finalize().into_bytes();
        let mut saw_v1 = false;
        let mut matched = subtle::Choice::from(0u8);
        for entry in headers.signature.split_whitespace() {
            let Some((version, encoded)) = entry.split_once(',') else {
                continue;
            };
            if version != "v1" {
                continue;
            }
            saw_v1 = true;
            if let Ok(candidate) = B64.decode(encoded) {
                matched |= expected.as_slice().ct_eq(&candidate);
            }
        }
        if !saw_v1 {
            return Err(VerifyError::NoSignature);
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(VerifyError::SignatureMismatch)
        }
    }
}

/// A new random secret: 32 bytes from the OS-seeded CSPRNG, serialized as `whsec_<base64>`.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", B64.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const PAYLOAD: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> SigningSecret {
        SigningSecret::parse(SECRET).unwrap()
    }

    fn headers<'a>(signature: &'a str, ts: &'a str) -> WebhookHeaders<'a> {
        WebhookHeaders { id: MSG_ID, timestamp: ts, signature }
    }

    #[test]
    fn svix_test_vector_signs() {
        assert_eq!(secret().sign(MSG_ID, TS, PAYLOAD), EXPECTED);
    }

    #[test]
    fn svix_test_vector_verifies() {
        let ts = TS.to_string();
        assert_eq!(secret().verify(&headers(EXPECTED, &ts), PAYLOAD, TS), Ok(()));
        // Tolerance: within 5 minutes either way passes, beyond fails.
        assert_eq!(secret().verify(&headers(EXPECTED, &ts), PAYLOAD, TS + 300), Ok(()));
        assert_eq!(secret().verify(&headers(EXPECTED, &ts), PAYLOAD, TS - 300), Ok(()));
        assert_eq!(secret().verify(&headers(EXPECTED, &ts), PAYLOAD, TS + 301), Err(VerifyError::TimestampTooOld));
        assert_eq!(secret().verify(&headers(EXPECTED, &ts), PAYLOAD, TS - 301), Err(VerifyError::TimestampTooNew));
        assert_eq!(secret().verify_with_tolerance(&headers(EXPECTED, &ts), PAYLOAD, TS + 1000, 1000), Ok(()));
    }

    #[test]
    fn any_listed_v1_signature_passes() {
        let ts = TS.to_string();
        let other = SigningSecret::parse(&generate_secret()).unwrap().sign(MSG_ID, TS, PAYLOAD);
        let list = format!("v1a,AAAA {other} garbage {EXPECTED}");
        assert_eq!(secret().verify(&headers(&list, &ts), PAYLOAD, TS), Ok(()));
        let only_other = format!("{other} v1,not-base64!");
        assert_eq!(secret().verify(&headers(&only_other, &ts), PAYLOAD, TS), Err(VerifyError::SignatureMismatch));
    }

    #[test]
    fn tampering_fails() {
        let ts = TS.to_string();
        assert_eq!(
            secret().verify(&headers(EXPECTED, &ts), br#"{"test": 2432232315}"#, TS),
            Err(VerifyError::SignatureMismatch)
        );
        let later = (TS + 1).to_string();
        assert_eq!(secret().verify(&headers(EXPECTED, &later), PAYLOAD, TS), Err(VerifyError::SignatureMismatch));
        let mut h = headers(EXPECTED, &ts);
        h.id = "msg_other";
        assert_eq!(secret().verify(&h, PAYLOAD, TS), Err(VerifyError::SignatureMismatch));
        h.id = "";
        assert_eq!(secret().verify(&h, PAYLOAD, TS), Err(VerifyError::MissingHeader(HEADER_ID)));
        // A truncated signature must not match as a prefix.
        let truncated = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE";
        assert_eq!(secret().verify(&headers(&truncated[..20], &ts), PAYLOAD, TS), Err(VerifyError::SignatureMismatch));
    }

    #[test]
    fn bad_headers_are_named() {
        let ts = TS.to_string();
        assert_eq!(secret().verify(&headers(EXPECTED, "soon"), PAYLOAD, TS), Err(VerifyError::InvalidTimestamp));
        assert_eq!(secret().verify(&headers("", &ts), PAYLOAD, TS), Err(VerifyError::NoSignature));
        assert_eq!(secret().verify(&headers("v2,abc", &ts), PAYLOAD, TS), Err(VerifyError::NoSignature));
    }

    #[test]
    fn header_map_reads_standard_and_svix_names() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let mut map = HeaderMap::new();
        map.insert("svix-id", HeaderValue::from_static(MSG_ID));
        map.insert("webhook-timestamp", HeaderValue::from_static("1614265330"));
        map.insert("webhook-signature", HeaderValue::from_static(EXPECTED));
        let h = WebhookHeaders::from_header_map(&map).unwrap();
        assert_eq!(secret().verify(&h, PAYLOAD, TS), Ok(()));
        map.remove("webhook-signature");
        assert_eq!(WebhookHeaders::from_header_map(&map), Err(VerifyError::MissingHeader(HEADER_SIGNATURE)));
    }

    #[test]
    fn secret_parsing_errors() {
        assert_eq!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(), SecretError::MissingPrefix);
        assert_eq!(SigningSecret::parse("whsec_not*base64").unwrap_err(), SecretError::InvalidBase64);
        // 12 bytes.
        assert_eq!(SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjU").unwrap_err(), SecretError::TooShort { len: 12 });
        // 16 bytes is accepted (lenient), 24 is the spec minimum.
        assert!(SigningSecret::parse(&format!("whsec_{}", B64.encode([7u8; 16]))).is_ok());
        assert!(" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse::<SigningSecret>().is_ok());
    }

    #[test]
    fn errors_and_debug_hide_the_secret() {
        let s = secret();
        assert_eq!(format!("{s:?}"), "SigningSecret(***)");
        for e in [
            SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS*").unwrap_err(),
            SigningSecret::parse("xx_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
        ] {
            assert!(!e.to_string().contains("MfKQ9r8"), "{e}");
        }
    }

    #[test]
    fn generated_secrets_are_fresh_32_byte_keys() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"));
        assert_eq!(B64.decode(&a["whsec_".len()..]).unwrap().len(), 32);
        let s = SigningSecret::parse(&a).unwrap();
        let sig = s.sign("msg_1", 1_700_000_000, b"{}");
        let h = WebhookHeaders { id: "msg_1", timestamp: "1700000000", signature: &sig };
        assert_eq!(s.verify(&h, b"{}", 1_700_000_010), Ok(()));
    }
}
