//! Secrets never appear in logs: `baton serve` runs a full handoff at debug level with a
//! desk that needs a password and a signing secret, an agent token and a widget token, and
//! the captured log is searched for every one of them.

use baton_tests::desk::FakeDesk;
use baton_tests::eventually;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PASSWORD: &str = "desk-password-7f3a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_log_of_a_whole_handoff_holds_no_secret() {
    let desk = FakeDesk::start(Some(SECRET)).await;
    // base64("hub:desk-password-7f3a9c")
    desk.expect_authorization("Basic aHViOmRlc2stcGFzc3dvcmQtN2YzYTlj");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("baton.sqlite");
    let agents = dir.path().join("agents.toml");
    std::fs::write(
        &agents,
        format!(
            "[[agent]]\nid = \"shop\"\n[agent.desk]\nkind = \"webhook\"\nurl = \"{}\"\nusername = \"hub\"\npassword = \"env:DESK_PW\"\nsigning_secret = \"env:DESK_SECRET\"\n",
            desk.url()
        ),
    )
    .unwrap();
    let apply = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["agents", "apply"])
        .arg(&agents)
        .arg("--data")
        .arg(&data)
        .env("DESK_PW", PASSWORD)
        .env("DESK_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(apply.status.success(), "{}", String::from_utf8_lossy(&apply.stderr));
    let stdout = String::from_utf8_lossy(&apply.stdout).to_string();
    let token = stdout.split("(shown once): ").nth(1).unwrap().trim().to_string();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--no-example", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(&data)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let session = eventually(Duration::from_secs(20), "server up", || async {
        let r =
            http.post(format!("{base}/api/widget/shop/session")).json(&json!({"email": "s@example.com"})).send().await;
        match r {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        }
    })
    .await;
    let wtoken = session["token"].as_str().unwrap().to_string();
    let send = |text: &str, id: &str| {
        http.post(format!("{base}/api/widget/shop/messages"))
            .bearer_auth(&wtoken)
            .json(&json!({"text": text, "client_id": id}))
            .send()
    };
    assert_eq!(send("human", "c1").await.unwrap().status(), 202);
    let est = desk.first_to("/conversation/establish").await;
    let conv = est.body["conversation_id"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{base}/desks/webhook/shop/v1/human/message/receive"))
        .bearer_auth(&token)
        .json(&json!({"conversation_id": conv, "timestamp": 1, "body": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A wrong token is refused (and its refusal logged without the token).
    let r = http
        .post(format!("{base}/desks/webhook/shop/v1/human/close"))
        .bearer_auth("bat_not_the_token")
        .json(&json!({"conversation_id": conv}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(send("/end", "c2").await.unwrap().status(), 202);
    desk.first_to("/conversation/close").await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let log = log.await.unwrap();
    assert!(log.contains("DEBUG") || log.contains("debug"), "the log was captured at debug level");
    let key_b64 = SECRET.trim_start_matches("whsec_");
    for (name, secret) in [
        ("desk password", PASSWORD),
        ("signing secret", SECRET),
        ("signing key", key_b64),
        ("basic credentials", "aHViOmRlc2stcGFzc3dvcmQtN2YzYTlj"),
        ("agent token", token.as_str()),
        ("widget token", wtoken.as_str()),
    ] {
        assert!(!log.contains(secret), "the log contains the {name}");
    }
}
