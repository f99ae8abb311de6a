//! Test support shared by the end-to-end tests: a fake webhook desk that follows the
//! webhook-desk contract and checks what it receives, a widget client, polling helpers,
//! a moto server for the AWS adapters and the ports' conformance suite.

pub mod conformance;
pub mod desk;
pub mod erp;
pub mod integration;
pub mod intercom;
pub mod line;
pub mod livechat;
pub mod memkv;
pub mod moto;
pub mod openai;
pub mod salesiq;
pub mod smtp;
pub mod telegram;
pub mod whatsapp;
pub mod widget;

use std::future::Future;
use std::time::{Duration, Instant};

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
