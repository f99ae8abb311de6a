//! The widget and the operator console in a real browser: headless Chromium from Debian's
//! packages, driven over WebDriver by ChromeDriver. The widget is embedded in a shop page of
//! another origin (bubble, `ChatBot.setEmail`, FAQ answer, handoff, the human's reply arriving
//! live, its "End chat" button), opened directly with `?email=`, and polling as on AWS
//! (`?poll=1`, seldom while its tab is hidden); the console is signed in to, and a
//! conversation taken, answered and ended. Screenshots of each step are kept in
//! `target/browser-artifacts/`.

mod common;

use axum::response::Html;
use axum::routing::get;
use baton_tests::webdriver::Browser;
use baton_tests::widget::WidgetClient;
use std::path::PathBuf;
use std::sync::Arc;

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts")
}

/// A customer's page on its own origin that embeds the widget and sets the e-mail early.
async fn shop_page(hub_base: &str) -> String {
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Shop</title></head>
<body><h1>Our shop</h1>
<script>window.ChatBot = window.ChatBot || {{ q: [] }}; window.ChatBot.q.push(["setEmail", "ana@example.com"]);</script>
<script src="{hub_base}/widget.js" data-agent="shop" data-title="Support" async></script>
</body></html>"#
    );
    let app = axum::Router::new().route("/", get(move || async move { Html(html) }));
    format!("http://{}/", baton_tests::serve_on_loopback(app).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_widget_answers_hands_over_shows_the_human_live_and_ends() {
    let hub = common::hub().await;
    let page = shop_page(&hub.base).await;
    let browser = Browser::start(&artifacts()).await;
    browser.goto(&page).await;
    let bubble = browser.find("button[data-baton=bubble]").await;
    browser.click(&bubble).await;
    let frame = browser.find("div[data-baton=panel] iframe").await;
    browser.enter_frame(&frame).await;

    let input = browser.find("#input").await;
    browser.type_text(&input, "What are your opening hours?").await;
    browser.click(&browser.find("#send").await).await;
    browser.find_text(".msg-bot .bubble", "We are open 9-17 on weekdays.").await;
    browser.top().await;
    browser.screenshot("widget-1-faq-answer").await;
    browser.enter_frame(&frame).await;

    browser.type_text(&input, "I want to talk to a human").await;
    browser.click(&browser.find("#send").await).await;
    let est = hub.desk.first_to("/conversation/establish").await;
    assert_eq!(est.body["email"], "ana@example.com", "ChatBot.setEmail reached the handoff");
    let conversation = est.body["conversation_id"].as_str().unwrap().to_string();
    assert_eq!(hub.desk_reply(&conversation, "Hello, this is Anna.", None).await.status(), 200);
    browser.find_text(".msg-human .bubble", "Hello, this is Anna.").await;
    browser.top().await;
    browser.screenshot("widget-2-human-reply").await;
    browser.enter_frame(&frame).await;

    let end = browser.find_text(".msg-human .buttons button", "End chat").await;
    browser.click(&end).await;
    let close = hub.desk.first_to("/conversation/close").await;
    assert_eq!(close.body["type"], "USER_CLOSED");
    browser.top().await;
    browser.screenshot("widget-3-ended").await;
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_page_takes_the_email_from_its_address() {
    let hub = common::hub().await;
    let browser = Browser::start(&artifacts()).await;
    browser.goto(&format!("{}/widget/shop?email=bo%40example.com", hub.base)).await;
    let input = browser.find("#input").await;
    browser.type_text(&input, "I want to talk to a human").await;
    browser.click(&browser.find("#send").await).await;
    let est = hub.desk.first_to("/conversation/establish").await;
    assert_eq!(est.body["email"], "bo@example.com");
    browser.screenshot("widget-4-email-from-address").await;
    hub.running.stop().await;
}

/// Counts the page's polls of the message log (its requests go through `window.fetch`).
const COUNT_POLLS: &str = r#"
window.__polls = 0;
var fetch0 = window.fetch;
window.fetch = function (url) {
  if (String(url).indexOf("/messages?after=") >= 0) window.__polls++;
  return fetch0.apply(this, arguments);
};
return true;"#;

/// The polls counted since [`COUNT_POLLS`] ran or the page was last hidden or shown.
async fn polls(browser: &Browser) -> u64 {
    browser.execute("return window.__polls;", serde_json::json!([])).await.as_u64().unwrap_or(0)
}

/// The user asks the widget for a human; returns the desk's conversation id.
async fn ask_for_a_human(browser: &Browser, hub: &common::Hub) -> String {
    let input = browser.find("#input").await;
    browser.type_text(&input, "I want to talk to a human").await;
    browser.click(&browser.find("#send").await).await;
    let est = hub.desk.first_to("/conversation/establish").await;
    est.body["conversation_id"].as_str().unwrap().to_string()
}

/// Tells the page it is hidden or shown, as the browser does when its tab is switched.
fn set_hidden(hidden: bool) -> String {
    format!(
        "Object.defineProperty(document, 'hidden', {{ configurable: true, get: function () {{ return {hidden}; }} }});
         document.dispatchEvent(new Event('visibilitychange')); window.__polls = 0; return true;"
    )
}

/// The widget as it runs on AWS (`?poll=1`: no stream): the human's replies arrive by polling,
/// every second while a human is on; a hidden tab polls seldom, and at once when shown again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_polling_widget_shows_the_human_and_polls_seldom_while_hidden() {
    let hub = common::hub().await;
    let browser = Browser::start(&artifacts()).await;
    browser.goto(&format!("{}/widget/shop?poll=1&email=di%40example.com", hub.base)).await;
    browser.execute(COUNT_POLLS, serde_json::json!([])).await;
    let conversation = ask_for_a_human(&browser, &hub).await;
    assert_eq!(hub.desk_reply(&conversation, "Hello, this is Anna.", None).await.status(), 200);
    browser.find_text(".msg-human .bubble", "Hello, this is Anna.").await;
    assert!(polls(&browser).await >= 1, "the reply came by polling");

    // Shown, with a human on, it polls every second.
    browser.execute(&set_hidden(false), serde_json::json!([])).await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let shown = polls(&browser).await;
    assert!(shown >= 3, "{shown} polls in 4 s while shown");

    // Hidden: the poll already scheduled, then none for 30 s.
    browser.execute(&set_hidden(true), serde_json::json!([])).await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let hidden = polls(&browser).await;
    assert!(hidden <= 1, "{hidden} polls in 4 s while hidden");
    assert_eq!(hub.desk_reply(&conversation, "Are you still there?", None).await.status(), 200);

    // Shown again: it polls at once (find_text waits 10 s; the hidden schedule, 30 s).
    browser.execute(&set_hidden(false), serde_json::json!([])).await;
    browser.find_text(".msg-human .bubble", "Are you still there?").await;
    browser.screenshot("widget-5-polled").await;
    hub.running.stop().await;
}

/// Plays conversation-worker's part on AWS for the widget's conversation: every message
/// logged for it is pushed, in order, to the newest connection through the management API
/// (signed, as the worker signs); `skip` leaves the next one out, as a lost push would.
fn forward_pushes(
    base: String,
    token: String,
    sockets: baton_tests::apigw_socket::FakeSocketApi,
    skip: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use baton_aws::aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
    let client = baton_aws::SocketClient::new(baton_aws::SocketEndpoint {
        url: sockets.url(),
        region: "us-east-1".into(),
        credentials: SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "test")),
    });
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut cursor = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let url = format!("{base}/api/widget/shop/messages?after={cursor}");
            let Ok(r) = http.get(&url).bearer_auth(&token).send().await else { continue };
            let Ok(page) = r.json::<serde_json::Value>().await else { continue };
            for m in page["messages"].as_array().cloned().unwrap_or_default() {
                cursor = m["seq"].as_i64().unwrap_or(cursor);
                if skip.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let Some(connection) = sockets.connections().last().map(|c| c.id.clone()) else { continue };
                let _ = client.post(&connection, m.to_string().as_bytes()).await;
            }
        }
    })
}

/// The widget page hosted apart from the hub, as on AWS (S3 and CloudFront, say): the hub's
/// own copies of the page and its assets, served without the hub's Content-Security-Policy
/// (which lets the page talk to its own origin only).
async fn hosted_page(hub_base: &str) -> String {
    let http = reqwest::Client::new();
    let mut files = Vec::new();
    for (path, from, kind) in [
        ("/widget.html", "/widget/shop", "text/html; charset=utf-8"),
        ("/widget.css", "/widget.css", "text/css"),
        ("/widget-page.js", "/widget-page.js", "text/javascript"),
    ] {
        let body = http.get(format!("{hub_base}{from}")).send().await.unwrap().text().await.unwrap();
        files.push((path, kind, body));
    }
    let mut app = axum::Router::new();
    for (path, kind, body) in files {
        app = app.route(path, get(move || async move { ([(axum::http::header::CONTENT_TYPE, kind)], body) }));
    }
    format!("http://{}/widget.html", baton_tests::serve_on_loopback(app).await)
}

/// The widget as on AWS with the WebSocket API (`?poll=1&socket=`): what the worker pushes
/// shows without a poll; after a lost push it reads the log; when API Gateway hangs up, it
/// polls at once and connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_shows_pushed_replies_and_polls_only_behind_its_socket() {
    let hub = common::hub().await;
    let sockets = baton_tests::apigw_socket::FakeSocketApi::start("test", "test", "us-east-1").await;
    let browser = Browser::start(&artifacts()).await;
    let socket = sockets.socket_url().replace(':', "%3A").replace('/', "%2F");
    let page = hosted_page(&hub.base).await;
    let api = hub.base.replace(':', "%3A").replace('/', "%2F");
    browser.goto(&format!("{page}?agent=shop&api={api}&poll=1&socket={socket}&email=ed%40example.com")).await;
    let first = baton_tests::eventually(std::time::Duration::from_secs(10), "the widget's socket", || async {
        sockets.connections().first().cloned()
    })
    .await;
    let param = |name: &str| {
        first.query.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).unwrap_or_default().to_string()
    };
    assert_eq!(param("agent"), "shop");
    let skip = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forwarder = forward_pushes(hub.base.clone(), param("token"), sockets.clone(), skip.clone());
    // After the one poll that reads what came before the socket, polling stands behind it.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    browser.execute(COUNT_POLLS, serde_json::json!([])).await;
    let polls = || polls(&browser);

    let conversation = ask_for_a_human(&browser, &hub).await;
    assert_eq!(hub.desk_reply(&conversation, "Hello, this is Anna.", None).await.status(), 200);
    browser.find_text(".msg-human .bubble", "Hello, this is Anna.").await;
    assert_eq!(polls().await, 0, "pushed, not polled");

    // A push lost: the next one shows the gap, and the widget reads both from the log.
    skip.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(hub.desk_reply(&conversation, "Let me check.", None).await.status(), 200);
    baton_tests::eventually(std::time::Duration::from_secs(10), "the push left out", || async {
        (!skip.load(std::sync::atomic::Ordering::SeqCst)).then_some(())
    })
    .await;
    assert_eq!(hub.desk_reply(&conversation, "Found it.", None).await.status(), 200);
    browser.find_text(".msg-human .bubble", "Found it.").await;
    browser.find_text(".msg-human .bubble", "Let me check.").await;
    assert_eq!(polls().await, 1, "one poll filled the gap");

    // API Gateway hangs up: a poll at once, and a new connection.
    sockets.hang_up(&first.id);
    baton_tests::eventually(std::time::Duration::from_secs(10), "a second connection", || async {
        (sockets.connections().len() == 2).then_some(())
    })
    .await;
    assert!(polls().await >= 2, "polled when the socket closed");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let before = polls().await;
    assert_eq!(hub.desk_reply(&conversation, "Anything else?", None).await.status(), 200);
    browser.find_text(".msg-human .bubble", "Anything else?").await;
    assert_eq!(polls().await, before, "pushed over the new connection");
    assert!(sockets.bad_signatures().is_empty());
    browser.screenshot("widget-6-pushed").await;
    forwarder.abort();
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_takes_replies_and_ends_in_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let opts = baton::serve::ServeOptions {
        example_agent: true,
        console_key: Some(common::CONSOLE_KEY.into()),
        ..baton::serve::ServeOptions::loopback(dir.path().join("baton.sqlite"))
    };
    let running = baton::serve::start(opts, Arc::new(baton_runtime::clock::SystemClock)).await.unwrap();
    let base = format!("http://{}", running.addr);
    let mut user = WidgetClient::start(&base, "demo", Some("cy@example.com")).await;
    user.send("I want to talk to a human").await;

    let browser = Browser::start(&artifacts()).await;
    browser.goto(&format!("{base}/console")).await;
    let key = browser.find("#key").await;
    browser.screenshot("console-1-sign-in").await;
    browser.type_text(&key, common::CONSOLE_KEY).await;
    browser.click(&browser.find("button[type=submit]").await).await;
    let conversation = browser.find_text(".conv", "cy@example.com").await;
    browser.click(&conversation).await;
    browser.wait_until("the Take button", "return !document.getElementById('take').hidden").await;
    browser.click(&browser.find("#take").await).await;
    browser.wait_until("the conversation taken", "return document.getElementById('take').hidden").await;
    let reply = browser.find("#reply-input").await;
    browser.type_text(&reply, "Hi Cy, this is the operator.").await;
    browser.click(&browser.find("#reply-send").await).await;
    user.wait_for("the operator's reply", |m| m["from"] == "human" && m["text"] == "Hi Cy, this is the operator.")
        .await;
    browser.find_text(".tmsg-text", "Hi Cy, this is the operator.").await;
    browser.screenshot("console-2-replied").await;

    browser.wait_until("the End button", "return !document.getElementById('end').hidden").await;
    browser.click(&browser.find("#end").await).await;
    user.wait_for("the end notice", |m| m["from"] == "system" && m["text"].as_str().unwrap_or("").contains("ended"))
        .await;
    browser.screenshot("console-3-ended").await;
    running.stop().await;
}
