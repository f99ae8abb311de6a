//! Data protection on `baton serve`: a conversation is deleted once its agent's retention has
//! passed since its last event (checked at start and hourly), and `baton users export|erase`
//! hand one end user their data or delete it.

mod common;

use baton_core::{Channel, ConversationKey, Millis};
use baton_runtime::clock::ManualClock;
use baton_tests::widget::WidgetClient;
use std::path::Path;
use std::sync::Arc;

const T0: i64 = 1_700_000_000_000;
const DAY: i64 = 86_400_000;

async fn serve(data: &Path, clock: Arc<ManualClock>) -> baton::serve::Running {
    let opts = baton::serve::ServeOptions {
        desk_probe: false,
        console_key: Some(common::CONSOLE_KEY.into()),
        ..baton::serve::ServeOptions::loopback(data.to_path_buf())
    };
    baton::serve::start(opts, clock).await.unwrap()
}

fn baton(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_baton")).args(args).arg("--data").arg(data).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_past_the_retention_are_deleted_and_users_can_be_exported_and_erased() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("baton.sqlite");
    let clock = Arc::new(ManualClock::new(Millis(T0)));
    let running = serve(&data, clock.clone()).await;
    let mut agent = common::shop_agent("http://127.0.0.1:9");
    agent.policy.retention_days = 2;
    running.ports.store.put_agent(&agent).await.unwrap();
    let base = format!("http://{}", running.addr);
    let mut keys = Vec::new();
    for user in ["ana", "bo"] {
        let mut w = WidgetClient::start(&base, "shop", Some(&format!("{user}@example.com"))).await;
        w.send(&format!("What are your opening hours? I am {user}.")).await;
        w.wait_for("the FAQ answer", |m| m["from"] == "bot").await;
        keys.push(ConversationKey::new("shop", Channel::Widget, &w.conversation_id).unwrap());
    }
    running.stop().await;
    let (ana, bo) = (keys[0].to_string(), keys[1].to_string());

    // The end user's data, as JSON.
    let (ok, out, err) = baton(&data, &["users", "export", &ana]);
    assert!(ok, "{err}");
    let export: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(export["conversation"], ana.as_str());
    assert!(out.contains("I am ana.") && !out.contains("I am bo."), "{out}");
    assert_eq!(export["messages"][0]["text"], "We are open 9-17 on weekdays.");
    assert!(!export["trace"].as_array().unwrap().is_empty());

    // Erasure needs a yes, then leaves nothing of ana and all of bo.
    let (ok, _, err) = baton(&data, &["users", "erase", &ana]);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, out, err) = baton(&data, &["users", "erase", &ana, "--yes"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("erased {ana}")), "{out}");
    let export: serde_json::Value = serde_json::from_str(&baton(&data, &["users", "export", &ana]).1).unwrap();
    assert!(export["session"].is_null() && export["messages"].as_array().unwrap().is_empty(), "{export}");
    let (_, out, _) = baton(&data, &["users", "export", &bo]);
    assert!(out.contains("I am bo."));
    let (ok, _, err) = baton(&data, &["users", "export", "not-a-key"]);
    assert!(!ok && err.contains("not-a-key"), "{err}");

    // A day later bo's conversation is still kept; two days after its last event it is gone.
    // (The purge runs before `start` returns.)
    clock.advance_secs(DAY / 1000);
    let running = serve(&data, clock.clone()).await;
    assert!(running.ports.store.load_session(&keys[1]).await.unwrap().is_some());
    running.stop().await;
    clock.advance_secs(DAY / 1000 + 60);
    let running = serve(&data, clock.clone()).await;
    assert!(running.ports.store.load_session(&keys[1]).await.unwrap().is_none());
    assert!(running.ports.store.trace(&keys[1]).await.unwrap().is_empty());
    running.stop().await;
}
