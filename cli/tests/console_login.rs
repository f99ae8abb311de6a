//! The operator console requires sign-in: the page sends strangers to the login form, the
//! API answers 401, a wrong key is refused, the session cookie is HttpOnly and
//! SameSite=Strict, cannot be forged or stretched, expires after 12 hours and ends on
//! sign-out. The desk side of the console stays on its webhook signatures.

mod common;

use baton_core::Millis;
use baton_runtime::clock::ManualClock;
use std::sync::Arc;

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn status_with(base: &str, path: &str, cookie: Option<&str>) -> (u16, Option<String>) {
    let mut req = client().get(format!("{base}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_requires_the_operator_key() {
    let clock = Arc::new(ManualClock::new(Millis(1_700_000_000_000)));
    let hub = common::hub_with(clock.clone(), |_| {}).await;
    let base = &hub.base;

    // Strangers: the page redirects to the form, the API refuses.
    assert_eq!(status_with(base, "/console", None).await, (303, Some("/console/login".into())));
    let resp = client().get(format!("{base}/console/api/conversations")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "login_required");
    let take = client().post(format!("{base}/console/api/conversations/x/take")).send().await.unwrap();
    assert_eq!(take.status(), 401);
    let form = client().get(format!("{base}/console/login")).send().await.unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(form.text().await.unwrap().contains("name=\"key\""));

    // A wrong key: 401, the form again, no cookie.
    let wrong = client().post(format!("{base}/console/login")).form(&[("key", "op_guess")]).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("not this hub's operator key"));

    // The right key: a session cookie the browser keeps to itself and to this site.
    let ok = client().post(format!("{base}/console/login")).form(&[("key", common::CONSOLE_KEY)]).send().await.unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/console");
    let set = ok.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=43200"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    assert_eq!(status_with(base, "/console", Some(&cookie)).await.0, 200);
    assert_eq!(status_with(base, "/console/api/conversations", Some(&cookie)).await.0, 200);
    assert_eq!(status_with(base, "/console/api/status", Some(&cookie)).await.0, 200);
    let status: serde_json::Value = client()
        .get(format!("{base}/console/api/status"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The hub's own tasks (worker, timers, listener) are alive at least.
    assert!(status["runtime"]["tasks"].as_u64().is_some_and(|n| n > 0), "{status}");

    // A forged or stretched session is refused: the signature covers the expiry.
    let (name, value) = cookie.split_once('=').unwrap();
    let (expires, sig) = value.split_once('.').unwrap();
    let stretched = format!("{name}={}.{sig}", expires.parse::<i64>().unwrap() + 86_400_000);
    assert_eq!(status_with(base, "/console/api/conversations", Some(&stretched)).await.0, 401);
    let forged = format!("{name}={expires}.{}", "0".repeat(sig.len()));
    assert_eq!(status_with(base, "/console/api/conversations", Some(&forged)).await.0, 401);

    // Twelve hours later the session has ended.
    clock.advance_secs(12 * 3600 - 1);
    assert_eq!(status_with(base, "/console/api/conversations", Some(&cookie)).await.0, 200);
    clock.advance_secs(2);
    assert_eq!(status_with(base, "/console/api/conversations", Some(&cookie)).await.0, 401);

    // Sign-out clears the cookie.
    let out = client().post(format!("{base}/console/logout")).send().await.unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    hub.running.stop().await;
}

/// `baton console key` prints the key `baton serve` created, and `--new` replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_and_replaces_the_stored_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("baton.sqlite");
    let baton = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string(), out.stderr)
    };
    let (ok, _, err) = baton(&["console", "key"]);
    assert!(!ok);
    assert!(String::from_utf8_lossy(&err).contains("baton serve` creates one"));

    let db = baton_embedded::Db::open(&data).unwrap();
    let (created, is_new) = baton::console_login::ensure_key(&db, None).await.unwrap();
    assert!(is_new && created.starts_with("op_") && created.len() >= baton::console_login::MIN_KEY_LEN);
    assert_eq!(baton::console_login::ensure_key(&db, None).await.unwrap(), (created.clone(), false));
    drop(db);
    assert_eq!(baton(&["console", "key"]).1, created);
    let (ok, replaced, _) = baton(&["console", "key", "--new"]);
    assert!(ok && replaced.starts_with("op_") && replaced != created);
    assert_eq!(baton(&["console", "key"]).1, replaced);
}
