//! Crash safety of `baton serve`: while a conversation's messages flow to the desk, the
//! server process is killed with SIGKILL and restarted, several times. Every accepted
//! message reaches the desk exactly once and in order; effects re-sent after a crash
//! carry the same `webhook-id`, which the desk uses to drop the copies.

use baton_tests::desk::FakeDesk;
use baton_tests::eventually;
use serde_json::json;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MESSAGES: usize = 60;

fn baton() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_baton"));
    c.env("DESK_SECRET", SECRET).env("RUST_LOG", "warn").kill_on_drop(true);
    c
}

async fn apply_agents(data: &Path, file: &Path) -> String {
    let out = baton().args(["agents", "apply"]).arg(file).arg("--data").arg(data).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let token = stdout.split("(shown once): ").nth(1).expect("token printed").trim().to_string();
    assert!(token.starts_with("bat_"));
    token
}

/// Start the server and wait until it says where it listens.
async fn serve(data: &Path, port: u16) -> Child {
    let mut child = baton()
        .args(["serve", "--no-example", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(first.contains("running on"), "{first}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_traffic_loses_and_doubles_nothing() {
    let desk = FakeDesk::start(Some(SECRET)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("baton.sqlite");
    let agents = dir.path().join("agents.toml");
    std::fs::write(
        &agents,
        format!(
            "[[agent]]\nid = \"shop\"\n[agent.desk]\nkind = \"webhook\"\nurl = \"{}\"\nsigning_secret = \"env:DESK_SECRET\"\n",
            desk.url()
        ),
    )
    .unwrap();
    let token = apply_agents(&data, &agents).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(&data, port).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();

    // A widget user is handed to the desk and a human replies.
    let s: serde_json::Value = http
        .post(format!("{base}/api/widget/shop/session"))
        .json(&json!({"email": "k@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let wtoken = s["token"].as_str().unwrap().to_string();
    let send = |text: String, id: String| {
        let http = http.clone();
        let url = format!("{base}/api/widget/shop/messages");
        let wtoken = wtoken.clone();
        async move { http.post(url).bearer_auth(wtoken).json(&json!({"text": text, "client_id": id})).send().await }
    };
    assert_eq!(send("human".into(), "c-human".into()).await.unwrap().status(), 202);
    let est = desk.first_to("/conversation/establish").await;
    let conv = est.body["conversation_id"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{base}/desks/webhook/shop/v1/human/message/receive"))
        .bearer_auth(&token)
        .json(&json!({"conversation_id": conv, "timestamp": 1, "body": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Messages flow; the server is killed at three points and restarted each time. A
    // message is accepted when the server answered 202; until then the client retries it
    // with the same client id, as the widget does.
    let kill_after = [7usize, 23, 41];
    for i in 0..MESSAGES {
        loop {
            match send(format!("m{i:03}"), format!("c{i:03}")).await {
                Ok(r) if r.status() == 202 => break,
                Ok(r) => panic!("unexpected status {}", r.status()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if kill_after.contains(&i) {
            // Let some effects be in flight, then kill without warning.
            tokio::time::sleep(Duration::from_millis(5 * (i as u64 % 7))).await;
            child.start_kill().unwrap();
            let _ = child.wait().await;
            child = serve(&data, port).await;
        }
    }

    let want: Vec<String> = (0..MESSAGES).map(|i| format!("m{i:03}")).collect();
    let got = eventually(Duration::from_secs(30), "every message at the desk", || async {
        let got: Vec<String> =
            desk.requests_to("/chat").iter().map(|r| r.body["body"].as_str().unwrap_or("").to_string()).collect();
        (got.len() >= MESSAGES).then_some(got)
    })
    .await;
    assert_eq!(got, want, "each accepted message exactly once, in order");
    assert_eq!(desk.bad_signatures(), 0);
    eprintln!("copies dropped by the desk's webhook-id check: {}", desk.duplicates());
    child.start_kill().unwrap();
}
