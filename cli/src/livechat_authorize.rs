//! `baton desks livechat authorize`: the one-time OAuth authorization-code flow that gives
//! the hub an agent's refresh token. LiveChat's customer tokens (to start chats as the
//! customer) can only be had with an OAuth agent token, not a personal access token.
//!
//! A listener on loopback receives the redirect; the `state` parameter ties it to this run.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use baton_connectors::livechat;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long to wait for the person to sign in and approve.
const WAIT: Duration = Duration::from_secs(600);

/// The redirect handler: passes `code` on when `state` matches.
async fn callback(
    State((state, tx)): State<(String, mpsc::Sender<Result<String, String>>)>,
    Query(q): Query<HashMap<String, String>>,
) -> &'static str {
    let result = match (q.get("state"), q.get("code"), q.get("error")) {
        (_, _, Some(err)) => Err(format!("LiveChat refused the authorization: {err}")),
        (Some(s), Some(code), None) if *s == state => Ok(code.clone()),
        _ => return "This is not the authorization this run started; close this tab.",
    };
    let _ = tx.send(result).await;
    "Done: you can close this tab and return to the terminal."
}

/// Run the flow for `cfg` and return the refresh token. `open` receives the URL to visit
/// (printed for a person; tests follow it themselves).
pub async fn authorize(
    cfg: &baton_core::agent::LivechatConfig,
    port: u16,
    out: &mut dyn Write,
    http: &reqwest::Client,
) -> anyhow::Result<baton_core::model::Secret> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let redirect_uri = format!("http://127.0.0.1:{}/callback", listener.local_addr()?.port());
    let state = baton_runtime::auth::generate_token();
    let (tx, mut rx) = mpsc::channel(1);
    let app = Router::new().route("/callback", get(callback)).with_state((state.clone(), tx));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = livechat::authorize_url(&cfg.client_id, &cfg.accounts_base, &redirect_uri, &state);
    writeln!(out, "Open this URL, sign in as the LiveChat agent the hub should act as, and approve:")?;
    writeln!(out, "  {url}")?;
    writeln!(out, "(the app's redirect URI must be {redirect_uri})")?;
    out.flush()?;
    let code = tokio::time::timeout(WAIT, rx.recv()).await;
    server.abort();
    let code = match code {
        Ok(Some(Ok(code))) => code,
        Ok(Some(Err(e))) => anyhow::bail!(e),
        _ => anyhow::bail!("no authorization arrived within {} minutes", WAIT.as_secs() / 60),
    };
    let token = livechat::exchange_code(
        http,
        &cfg.accounts_base,
        &cfg.client_id,
        cfg.client_secret.expose(),
        &code,
        &redirect_uri,
    )
    .await?;
    Ok(token)
}
