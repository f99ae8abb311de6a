//! Operator login for the console. One operator key per hub: given with `--console-key`, or
//! generated on first start and kept in the data file (`baton console key` shows it again).
//! Signing in exchanges it for a session cookie signed with the key (HttpOnly,
//! SameSite=Strict, 12 hours), so a new key ends every session.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use baton_core::ports::Clock;
use baton_embedded::Db;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

const COOKIE: &str = "baton_console";
const SESSION_MS: i64 = 12 * 3600 * 1000;
const SETTING: &str = "console_operator_key";
/// Shortest key accepted from the command line: guessing must stay out of reach.
pub const MIN_KEY_LEN: usize = 16;

/// The hub's operator key: `given`, or the stored one, or a new one. `true` when it was
/// created now (so it is shown once).
pub async fn ensure_key(db: &Db, given: Option<String>) -> anyhow::Result<(String, bool)> {
    if let Some(key) = given {
        anyhow::ensure!(key.len() >= MIN_KEY_LEN, "the console key must be at least {MIN_KEY_LEN} characters");
        return Ok((key, false));
    }
    if let Some(key) = db.setting(SETTING).await? {
        return Ok((key, false));
    }
    let key = db.get_or_insert_setting(SETTING, new_key).await?;
    Ok((key, true))
}

/// Replace the stored key (sessions signed with the old one end when `baton serve` restarts).
pub async fn replace_key(db: &Db) -> anyhow::Result<String> {
    let key = new_key();
    db.set_setting(SETTING, &key).await?;
    Ok(key)
}

pub async fn stored_key(db: &Db) -> anyhow::Result<Option<String>> {
    Ok(db.setting(SETTING).await?)
}

fn new_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("op_{}", hex::encode(bytes))
}

#[derive(Clone)]
pub struct OperatorLogin {
    key: Arc<String>,
    clock: Arc<dyn Clock>,
}

impl OperatorLogin {
    pub fn new(key: String, clock: Arc<dyn Clock>) -> Self {
        OperatorLogin { key: Arc::new(key), clock }
    }

    fn mac(&self, expires: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(b"baton-console-session:");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    fn new_session(&self) -> String {
        let expires = self.clock.now().0 + SESSION_MS;
        format!("{expires}.{}", hex::encode(self.mac(expires).finalize().into_bytes()))
    }

    fn session_valid(&self, value: &str) -> bool {
        let Some((expires, sig)) = value.split_once('.') else { return false };
        let (Ok(expires), Ok(sig)) = (expires.parse::<i64>(), hex::decode(sig)) else { return false };
        expires > self.clock.now().0 && self.mac(expires).verify_slice(&sig).is_ok()
    }

    /// Constant-time, on digests so the length of the key is not revealed either.
    fn key_matches(&self, given: &str) -> bool {
        Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(self.key.as_bytes())).into()
    }

    fn signed_in(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == COOKIE && self.session_valid(value))
    }
}

/// Lets signed-in operators through; the console page sends others to the login page, the
/// API answers 401.
pub async fn require_operator(State(login): State<OperatorLogin>, req: Request, next: Next) -> Response {
    if login.signed_in(req.headers()) {
        return next.run(req).await;
    }
    if req.uri().path().starts_with("/console/api/") {
        let body =
            serde_json::json!({"error": {"code": "login_required", "message": "sign in at /console/login first"}});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    Redirect::to("/console/login").into_response()
}

pub async fn login_page() -> Response {
    page(StatusCode::OK, "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    key: String,
}

pub async fn login(State(login): State<OperatorLogin>, Form(form): Form<LoginForm>) -> Response {
    if !login.key_matches(form.key.trim()) {
        return page(StatusCode::UNAUTHORIZED, "That is not this hub's operator key.");
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        login.new_session(),
        SESSION_MS / 1000
    );
    with_cookie(Redirect::to("/console").into_response(), &cookie)
}

pub async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    with_cookie(Redirect::to("/console/login").into_response(), &cookie)
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn page(status: StatusCode, error: &str) -> Response {
    let error =
        if error.is_empty() { String::new() } else { format!("<p class=\"login-error\" role=\"alert\">{error}</p>") };
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Baton console: sign in</title>
  <link rel="stylesheet" href="/console.css">
</head>
<body class="login-page">
  <form class="login-box" method="post" action="/console/login">
    <h1>Baton <span>console</span></h1>
    <p>Enter this hub's operator key. <code>baton serve</code> printed it when it created it;
      <code>baton console key</code> shows it again.</p>
    {error}
    <label for="key">Operator key</label>
    <input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
    <button type="submit" class="primary">Sign in</button>
  </form>
</body>
</html>
"#
    );
    crate::assets::html_page(status, html)
}
