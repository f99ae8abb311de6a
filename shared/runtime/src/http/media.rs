//! `GET /media/{agent}/{channel}/{id}?exp=..&sig=..`: the file behind a media link in a
//! placeholder (see [`crate::media`]), fetched from the channel with the agent's
//! credentials. Served so that it cannot run as a page of the hub: only images, audio, video
//! and PDF are shown inline, anything else is a download; `nosniff` and a sandboxing CSP on
//! every answer.

use super::channels::resolved_agent;
use super::{ApiError, AppState};
use crate::media::LinkError;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use baton_core::ports::DeliveryError;
use baton_core::Channel;

pub fn routes() -> Router<AppState> {
    Router::new().route("/media/{agent}/{channel}/{id}", get(media))
}

#[derive(serde::Deserialize)]
struct Signed {
    exp: Option<i64>,
    sig: Option<String>,
}

/// Content types a browser may show in place; the rest is offered as a download.
fn inline(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    ["image/", "audio/", "video/"].iter().any(|p| essence.starts_with(p)) && essence != "image/svg+xml"
        || essence == "application/pdf"
}

async fn media(
    State(st): State<AppState>,
    Path((agent_id, channel, id)): Path<(String, String, String)>,
    Query(q): Query<Signed>,
) -> Result<Response, ApiError> {
    let invalid = || ApiError::new(StatusCode::FORBIDDEN, "invalid_link", "this media link is not valid");
    let channel = Channel::parse(&channel).ok_or_else(invalid)?;
    let (Some(exp), Some(sig)) = (q.exp, q.sig) else { return Err(invalid()) };
    match st.media.links.verify(&agent_id, channel, &id, exp, &sig, st.ports.clock.now()) {
        Ok(()) => {}
        Err(LinkError::Invalid) => return Err(invalid()),
        Err(LinkError::Expired) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "link_expired",
                "this media link has expired; the file may still be in the user's chat",
            ))
        }
    }
    let agent = resolved_agent(&st, &agent_id).await?;
    let fetched = st.media.fetcher.fetch(&agent, channel, &id).await.map_err(|e| {
        tracing::warn!(agent = %agent.id, channel = channel.as_str(), error = %e, "a media file could not be fetched");
        let message = match &e {
            DeliveryError::Retryable { .. } => "the channel did not hand out the file right now; try again shortly",
            DeliveryError::Unauthorized { .. } => "the channel refused the agent's credentials",
            DeliveryError::Permanent { .. } => "the channel no longer has this file or it is too large to pass on",
        };
        ApiError::new(StatusCode::BAD_GATEWAY, "media_unavailable", message)
    })?;
    let content_type = fetched.content_type.unwrap_or_else(|| "application/octet-stream".into());
    let shown = inline(&content_type);
    let mut response = (StatusCode::OK, fetched.bytes).into_response();
    let headers = response.headers_mut();
    let content_type = if shown { content_type } else { "application/octet-stream".into() };
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let disposition = if shown { "inline" } else { "attachment" };
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(disposition));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_media_and_pdf_are_shown_inline() {
        for ct in ["image/jpeg", "audio/ogg; codecs=opus", "video/mp4", "application/pdf", "IMAGE/PNG"] {
            assert!(super::inline(ct), "{ct}");
        }
        for ct in ["text/html", "image/svg+xml", "application/octet-stream", "application/javascript", ""] {
            assert!(!super::inline(ct), "{ct}");
        }
    }
}
