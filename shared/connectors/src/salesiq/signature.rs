//! "Secure your webhook": SalesIQ signs every webhook body with its private key and sends the
//! Base64 signature in `x-siqsignature`; we verify it with the public key(s) it gave us.
//! RSASSA-PKCS1-v1_5 with SHA-256 over the raw request body (see the module docs of
//! [`crate::salesiq`] for the sources).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::Sha256;

/// The header carrying the signature (HTTP header names are case-insensitive).
pub const SIGNATURE_HEADER: &str = "x-siqsignature";

/// Longest header value looked at (a 4096-bit signature is 684 Base64 characters).
const MAX_SIGNATURE_CHARS: usize = 2048;

/// Why a webhook body is not accepted as SalesIQ's. The messages never echo the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the x-siqsignature header is missing")]
    Missing,
    #[error("the x-siqsignature header is not a Base64 RSA signature")]
    Malformed,
    #[error("the x-siqsignature signature does not match the body for any configured public key")]
    Mismatch,
    #[error("no SalesIQ webhook public key is configured (salesiq.webhook_public_keys)")]
    NoKeys,
    #[error("salesiq.webhook_public_keys[{index}] is not an RSA public key: {message}")]
    BadKey { index: usize, message: String },
}

/// Verify `header` (the `x-siqsignature` value) over `body` with any of `public_keys`.
///
/// Keys are PEM (`-----BEGIN PUBLIC KEY-----`, X.509 SubjectPublicKeyInfo; `BEGIN RSA PUBLIC
/// KEY` PKCS#1 is accepted too) or the bare Base64 DER of either. One verifying key is enough,
/// so the old and the new key both work during a rotation. A key that cannot be read is
/// reported only when no other key verifies the body.
pub fn verify(public_keys: &[String], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let keys: Vec<(usize, &str)> =
        public_keys.iter().enumerate().map(|(i, k)| (i, k.trim())).filter(|(_, k)| !k.is_empty()).collect();
    if keys.is_empty() {
        return Err(SignatureError::NoKeys);
    }
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(SignatureError::Missing)?;
    if header.len() > MAX_SIGNATURE_CHARS {
        return Err(SignatureError::Malformed);
    }
    let bytes = STANDARD
        .decode(header)
        .or_else(|_| STANDARD_NO_PAD.decode(header.trim_end_matches('=')))
        .map_err(|_| SignatureError::Malformed)?;
    if bytes.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let signature = Signature::try_from(bytes.as_slice()).map_err(|_| SignatureError::Malformed)?;
    let mut bad_key = None;
    for (index, key) in keys {
        match parse_key(key) {
            Ok(key) => {
                if VerifyingKey::<Sha256>::new(key).verify(body, &signature).is_ok() {
                    return Ok(());
                }
            }
            Err(message) => {
                bad_key.get_or_insert(SignatureError::BadKey { index, message });
            }
        }
    }
    Err(bad_key.unwrap_or(SignatureError::Mismatch))
}

/// An RSA public key from PEM or bare Base64 DER (SPKI first, then PKCS#1).
fn parse_key(key: &str) -> Result<RsaPublicKey, String> {
    if key.contains("-----BEGIN") {
        // Keys pasted into TOML or environment variables sometimes carry literal "\n".
        let pem = key.replace("\\n", "\n");
        return RsaPublicKey::from_public_key_pem(&pem)
            .or_else(|e| RsaPublicKey::from_pkcs1_pem(&pem).map_err(|_| e))
            .map_err(|e| format!("PEM: {e}"));
    }
    let compact: String = key.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD
        .decode(&compact)
        .or_else(|_| STANDARD_NO_PAD.decode(compact.trim_end_matches('=')))
        .map_err(|_| "neither PEM nor Base64 DER".to_string())?;
    RsaPublicKey::from_public_key_der(&der)
        .or_else(|e| RsaPublicKey::from_pkcs1_der(&der).map_err(|_| e))
        .map_err(|e| format!("DER: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::signature::{SignatureEncoding, Signer};
    use rsa::RsaPrivateKey;
    use std::sync::OnceLock;

    /// Two key pairs per test binary (1024 bits: key generation is slow in debug builds).
    fn keys() -> &'static (RsaPrivateKey, RsaPrivateKey) {
        static KEYS: OnceLock<(RsaPrivateKey, RsaPrivateKey)> = OnceLock::new();
        KEYS.get_or_init(|| {
            let mut rng = rand::thread_rng();
            (RsaPrivateKey::new(&mut rng, 1024).unwrap(), RsaPrivateKey::new(&mut rng, 1024).unwrap())
        })
    }

    fn sign(key: &RsaPrivateKey, body: &[u8]) -> String {
        STANDARD.encode(SigningKey::<Sha256>::new(key.clone()).sign(body).to_bytes())
    }

    fn pem(key: &RsaPrivateKey) -> String {
        key.to_public_key().to_public_key_pem(LineEnding::LF).unwrap()
    }

    fn bare_der(key: &RsaPrivateKey) -> String {
        STANDARD.encode(key.to_public_key().to_public_key_der().unwrap().as_bytes())
    }

    const BODY: &[u8] = br#"{"event":"conversation.visitor.replied","entity_id":"1"}"#;

    #[test]
    fn good_signature_verifies_with_pem_or_bare_der() {
        let (a, _) = keys();
        let sig = sign(a, BODY);
        assert_eq!(verify(&[pem(a)], BODY, Some(&sig)), Ok(()));
        assert_eq!(verify(&[bare_der(a)], BODY, Some(&sig)), Ok(()));
        // Line-wrapped DER, as copied from a PEM body, and a PEM with literal "\n".
        let wrapped: String =
            bare_der(a).as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n");
        assert_eq!(verify(&[wrapped], BODY, Some(&sig)), Ok(()));
        assert_eq!(verify(&[pem(a).replace('\n', "\\n")], BODY, Some(&sig)), Ok(()));
        // Surrounding whitespace in the header is ignored.
        assert_eq!(verify(&[pem(a)], BODY, Some(&format!(" {sig} "))), Ok(()));
    }

    #[test]
    fn either_key_verifies_during_rotation() {
        let (a, b) = keys();
        let both = [pem(a), pem(b)];
        assert_eq!(verify(&both, BODY, Some(&sign(a, BODY))), Ok(()));
        assert_eq!(verify(&both, BODY, Some(&sign(b, BODY))), Ok(()));
        // A broken first key does not stop the second from verifying.
        assert_eq!(verify(&["garbage!".into(), pem(b)], BODY, Some(&sign(b, BODY))), Ok(()));
    }

    #[test]
    fn tampered_body_or_wrong_key_is_a_mismatch() {
        let (a, b) = keys();
        let sig = sign(a, BODY);
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(verify(&[pem(a)], &tampered, Some(&sig)), Err(SignatureError::Mismatch));
        assert_eq!(verify(&[pem(b)], BODY, Some(&sig)), Err(SignatureError::Mismatch));
        // A valid Base64 value of the wrong length is a mismatch too, not a panic.
        assert_eq!(verify(&[pem(a)], BODY, Some(&STANDARD.encode([7u8; 16]))), Err(SignatureError::Mismatch));
    }

    #[test]
    fn header_problems() {
        let (a, _) = keys();
        assert_eq!(verify(&[pem(a)], BODY, None), Err(SignatureError::Missing));
        assert_eq!(verify(&[pem(a)], BODY, Some("  ")), Err(SignatureError::Missing));
        assert_eq!(verify(&[pem(a)], BODY, Some("not base64 at all!")), Err(SignatureError::Malformed));
        assert_eq!(verify(&[pem(a)], BODY, Some(&"A".repeat(5000))), Err(SignatureError::Malformed));
        let e = verify(&[pem(a)], BODY, Some("%%secret-looking%%")).unwrap_err();
        assert!(!e.to_string().contains("secret-looking"), "{e}");
    }

    #[test]
    fn key_problems() {
        let (a, b) = keys();
        let sig = sign(a, BODY);
        assert_eq!(verify(&[], BODY, Some(&sig)), Err(SignatureError::NoKeys));
        assert_eq!(verify(&[" ".into()], BODY, Some(&sig)), Err(SignatureError::NoKeys));
        assert!(matches!(
            verify(
                &[pem(a), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----".into()],
                BODY,
                Some(&sign(b, BODY))
            ),
            Err(SignatureError::BadKey { index: 1, .. })
        ));
        assert!(matches!(verify(&["%%%".into()], BODY, Some(&sig)), Err(SignatureError::BadKey { index: 0, .. })));
        assert!(matches!(
            verify(&[STANDARD.encode(b"not a key")], BODY, Some(&sig)),
            Err(SignatureError::BadKey { index: 0, .. })
        ));
    }
}
