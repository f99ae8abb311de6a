//! A proxy in front of `moto_server` that forwards one request at a time. DynamoDB applies
//! every conditional write and transaction atomically; moto_server serves requests on many
//! threads without locking its tables, so two concurrent conditional writes can both pass
//! there. Tests of concurrent writers (several workers on one conversation) go through this
//! proxy, so what they check is the hub's logic and not moto's races.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

#[derive(Clone)]
struct State {
    upstream: String,
    http: reqwest::Client,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// Start the proxy in front of `upstream` (moto's endpoint URL); returns its URL.
pub async fn start(upstream: &str) -> String {
    let state = State {
        upstream: upstream.trim_end_matches('/').to_string(),
        http: reqwest::Client::new(),
        one_at_a_time: Arc::new(tokio::sync::Mutex::new(())),
    };
    let app = axum::Router::new().fallback(forward).with_state(state);
    format!("http://{}", crate::serve_on_loopback(app).await)
}

async fn forward(
    axum::extract::State(st): axum::extract::State<State>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _turn = st.one_at_a_time.lock().await;
    match crate::forward::send(&st.http, &st.upstream, "serializing proxy", method, &uri, &headers, body).await {
        Ok(answer) => answer.into_response(),
        Err(failed) => failed,
    }
}
