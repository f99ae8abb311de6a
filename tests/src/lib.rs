//! Test support shared by the end-to-end tests: a fake webhook desk that follows the
//! webhook-desk contract and checks what it receives, a widget client, polling helpers,
//! a moto server for the AWS adapters and the ports' conformance suite.

pub mod apigw_socket;
pub mod aws_meter;
pub mod conformance;
pub mod desk;
pub mod erp;
pub mod failing_store;
pub mod forward;
pub mod hosted;
pub mod integration;
pub mod intercom;
pub mod line;
pub mod livechat;
pub mod memkv;
pub mod moto;
pub mod openai;
pub mod salesiq;
pub mod scale;
pub mod serialized;
pub mod smtp;
pub mod telegram;
pub mod webdriver;
pub mod whatsapp;
pub mod widget;

use std::future::Future;
use std::time::{Duration, Instant};

/// Serve `app` on a free loopback port for the rest of the test; its address.
pub async fn serve_on_loopback(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sign in to a `baton serve` console with the operator `key`; returns the `Cookie` header
/// value that carries the session.
pub async fn console_cookie(base: &str, key: &str) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = client.post(format!("{base}/console/login")).form(&[("key", key)]).send().await.unwrap();
    assert_eq!(resp.status(), 303, "sign-in refused");
    let set = resp.headers().get("set-cookie").expect("a session cookie").to_str().unwrap();
    set.split(';').next().unwrap().to_string()
}
