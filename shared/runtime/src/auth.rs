//! Agent access tokens: shown once, stored as SHA-256 hashes, compared in constant time.

use baton_core::ports::{Store, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new random token: `bat_` + 32 random bytes as hex.
pub fn generate_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("bat_{}", hex::encode(b))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// True when `token` is one of the agent's tokens. Every stored hash is compared,
/// in constant time, so timing reveals neither which one matched nor how much.
pub async fn token_matches(store: &dyn Store, agent: &str, token: &str) -> Result<bool, StoreError> {
    let presented = hash_token(token);
    let hashes = store.token_hashes(agent).await?;
    let mut ok = subtle::Choice::from(0u8);
    for h in &hashes {
        ok |= h.as_bytes().ct_eq(presented.as_bytes());
    }
    Ok(bool::from(ok))
}

/// The bearer token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let v = header?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_is_stable() {
        let a = generate_token();
        assert_ne!(a, generate_token());
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_eq!(hash_token(&a).len(), 64);
        assert!(!hash_token(&a).contains(&a[4..]));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
