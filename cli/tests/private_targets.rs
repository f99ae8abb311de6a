//! The guard against server-side request forgery on a `baton serve` that calls public
//! addresses only (the default when it listens beyond loopback): an endpoint on loopback is
//! refused whether the configuration writes it as an address or as a name, the desk hears
//! nothing, the user is told nobody can be reached, and the operator gets an alert.

mod common;

use baton::serve::Targets;
use baton_core::agent::DeskConfig;
use baton_core::model::Secret;
use baton_runtime::clock::SystemClock;
use baton_tests::widget::WidgetClient;
use std::sync::Arc;

fn desk_at(url: String) -> DeskConfig {
    DeskConfig::Webhook { url, username: None, password: None, signing_secret: Some(Secret(common::SECRET.into())) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_for_public_targets_calls_no_loopback_desk() {
    // The desk probe is off so that the handoff really tries to open the desk.
    let hub = common::hub_on(Arc::new(SystemClock), false, Targets::PublicOnly, |_| {}).await;
    let port = hub.desk.addr.port();

    // Written as an address: refused before any connection.
    let mut w = WidgetClient::start(&hub.base, "shop", Some("ana@example.com")).await;
    w.send("I want to talk to a human").await;
    w.wait_for("the could-not-reach notice", |m| m["text"].as_str().unwrap_or("").contains("could not reach our team"))
        .await;
    let alerts = hub.running.ports.alerts.recent();
    assert!(
        alerts.iter().any(|a| a.contains("refused: desk.url points at 127.0.0.1")),
        "the operator is told why: {alerts:?}"
    );

    // Written as `localhost`: refused the same way (other names are refused when they
    // resolve: shared/connectors/tests/webhook_desk_http.rs).
    let mut agent = hub.running.ports.store.get_agent("shop").await.unwrap().unwrap();
    agent.desk = desk_at(format!("http://localhost:{port}"));
    hub.running.ports.store.put_agent(&agent).await.unwrap();
    let mut w = WidgetClient::start(&hub.base, "shop", Some("bo@example.com")).await;
    w.send("I want to talk to a human").await;
    w.wait_for("the could-not-reach notice", |m| m["text"].as_str().unwrap_or("").contains("could not reach our team"))
        .await;
    let alerts = hub.running.ports.alerts.recent();
    assert!(alerts.iter().any(|a| a.contains("refused: desk.url points at localhost")), "{alerts:?}");
    assert!(hub.desk.requests().is_empty(), "the desk on loopback heard nothing: {:?}", hub.desk.requests());
    hub.running.stop().await;
}

/// The same hub allowed private targets (the local-use case) reaches the same desk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_allowed_private_targets_reaches_the_loopback_desk_by_name() {
    let hub = common::hub_on(Arc::new(SystemClock), false, Targets::Any, |_| {}).await;
    let port = hub.desk.addr.port();
    let mut agent = hub.running.ports.store.get_agent("shop").await.unwrap().unwrap();
    agent.desk = desk_at(format!("http://localhost:{port}"));
    hub.running.ports.store.put_agent(&agent).await.unwrap();
    let w = WidgetClient::start(&hub.base, "shop", Some("cy@example.com")).await;
    w.send("I want to talk to a human").await;
    hub.desk.first_to("/conversation/establish").await;
    hub.running.stop().await;
}

#[test]
fn an_agents_file_with_private_endpoints_is_refused_with_each_field_named() {
    let src = r#"
[[agent]]
id = "shop"
[agent.desk]
kind = "webhook"
url = "http://169.254.169.254/latest/meta-data"
[agent.fallback]
kind = "ticket"
url = "http://[::ffff:10.0.0.7]/tickets"
"#;
    let agents = baton::config::parse("agents.toml", src, &|_| None).unwrap();
    let err = baton::config::refuse_private_targets(&agents).unwrap_err().to_string();
    assert!(err.contains("agent shop: desk.url points at 169.254.169.254"), "{err}");
    assert!(err.contains("agent shop: fallback.url points at ::ffff:10.0.0.7"), "{err}");
    assert!(err.contains("--allow-private-targets"), "{err}");
    let public = src.replace("169.254.169.254", "desk.example.com").replace("[::ffff:10.0.0.7]", "tickets.example.com");
    let agents = baton::config::parse("agents.toml", &public, &|_| None).unwrap();
    assert!(baton::config::refuse_private_targets(&agents).is_ok());
}
