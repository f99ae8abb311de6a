//! Static pages of `baton serve`: the landing page, the embeddable widget and its page, and
//! the operator console. Compiled into the binary; served with a strict CSP.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../assets/index.html")),
    ("index.css", "text/css; charset=utf-8", include_str!("../assets/index.css")),
    ("index.js", "text/javascript; charset=utf-8", include_str!("../assets/index.js")),
    ("widget.js", "text/javascript; charset=utf-8", include_str!("../assets/widget.js")),
    ("widget.html", "text/html; charset=utf-8", include_str!("../assets/widget.html")),
    ("widget.css", "text/css; charset=utf-8", include_str!("../assets/widget.css")),
    ("widget-page.js", "text/javascript; charset=utf-8", include_str!("../assets/widget-page.js")),
    ("console.html", "text/html; charset=utf-8", include_str!("../assets/console.html")),
    ("console.css", "text/css; charset=utf-8", include_str!("../assets/console.css")),
    ("console.js", "text/javascript; charset=utf-8", include_str!("../assets/console.js")),
];

/// Pages may be framed where they are meant to be embedded (the widget page) and nowhere else.
const CSP_PAGE: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";
const CSP_WIDGET: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors *";
const CSP_LANDING: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-src 'self'; frame-ancestors 'none'";

fn file(name: &str, csp: Option<&'static str>) -> Response {
    let Some((_, mime, body)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut resp = (*body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Some(csp) = csp {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    }
    if name == "widget.js" {
        // Loaded by customer sites from another origin.
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    resp
}

/// The console's page (served behind the operator login).
pub fn console_page() -> Response {
    file("console.html", Some(CSP_PAGE))
}

/// A page made at run time, with the same headers as the files.
pub fn html_page(status: StatusCode, html: String) -> Response {
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP_PAGE));
    resp
}

pub fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { file("index.html", Some(CSP_LANDING)) }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/widget/{agent}", get(|Path(_agent): Path<String>| async { file("widget.html", Some(CSP_WIDGET)) }))
        .route(
            "/{asset}",
            get(|Path(name): Path<String>| async move {
                if name.ends_with(".html") {
                    return StatusCode::NOT_FOUND.into_response();
                }
                file(&name, None)
            }),
        )
}
