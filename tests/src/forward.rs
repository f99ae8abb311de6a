//! Forwarding one request to an upstream server and back, for the proxies in front of
//! moto_server (`serialized`, `aws_meter`).

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// The upstream's answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Send `method path` with `headers` and `body` to `upstream` (a base URL without a
/// trailing slash); `Err` is a response that says the upstream failed, named by `proxy`.
pub async fn send(
    http: &reqwest::Client,
    upstream: &str,
    proxy: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Answer, Response> {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = http.request(method, format!("{upstream}{path}")).body(body);
    for (name, value) in headers.iter() {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    let upstream = req
        .send()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{proxy}: upstream failed: {e}")).into_response())?;
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let body = upstream.bytes().await.unwrap_or_default();
    Ok(Answer { status, headers, body })
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut out = Response::builder().status(self.status);
        for (name, value) in self.headers.iter() {
            if name != "content-length" && name != "transfer-encoding" {
                out = out.header(name, value);
            }
        }
        out.body(axum::body::Body::from(self.body)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
    }
}
