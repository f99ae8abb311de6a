//! A small W3C WebDriver client for the browser tests: Debian's ChromeDriver driving headless
//! Chromium (`apt-get install chromium chromium-driver`). Only the commands the tests use:
//! sessions, navigation, elements (CSS), clicks, typing, frames, scripts and screenshots.

use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C's key for an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running ChromeDriver with one headless Chromium session; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
    artifacts: PathBuf,
}

/// An element of the current page or frame.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Start ChromeDriver on a free port and open a headless session. Panics with what to
    /// install when Chromium or ChromeDriver is missing. Screenshots go to `artifacts`.
    pub async fn start(artifacts: &Path) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(Path::new(bin).exists(), "{bin} is missing: apt-get install chromium chromium-driver");
        }
        std::fs::create_dir_all(artifacts).expect("artifacts directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        crate::eventually(Duration::from_secs(20), "chromedriver to listen", || async {
            let status: Value = http.get(format!("{base}/status")).send().await.ok()?.json().await.ok()?;
            (status["value"]["ready"] == true).then_some(())
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        // The flags keep Chromium off the network it cannot reach here (see the machine notes).
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let resp: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = resp["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {resp}")).to_string();
        Browser { driver, base, session, http, _profile: profile, artifacts: artifacts.to_path_buf() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|(error, message)| panic!("webdriver {path}: {error}: {message}"))
    }

    /// The call's value, or the WebDriver error and its message.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (String, Value)> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp: Value = req.send().await.expect("webdriver call").json().await.expect("webdriver JSON");
        match resp["value"]["error"].as_str() {
            Some(error) => Err((error.to_string(), resp["value"]["message"].clone())),
            None => Ok(resp["value"].clone()),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// The elements matching `css` now (none is fine).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let found = self.post("/elements", json!({"using": "css selector", "value": css})).await;
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str())
            .map(|id| Element(id.into()))
            .collect()
    }

    /// The first element matching `css`, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> Element {
        crate::eventually(Duration::from_secs(10), css, || async { self.find_all(css).await.into_iter().next() }).await
    }

    /// The first element matching `css` whose text contains `text`, waiting up to 10 s.
    pub async fn find_text(&self, css: &str, text: &str) -> Element {
        crate::eventually(Duration::from_secs(10), &format!("{css} with {text:?}"), || async {
            for e in self.find_all(css).await {
                // The page may replace the element between finding and reading it: look again.
                match self.try_text(&e).await {
                    Ok(t) if t.contains(text) => return Some(e),
                    Ok(_) => {}
                    Err((error, _)) if error == "stale element reference" => return None,
                    Err((error, message)) => panic!("webdriver text of {}: {error}: {message}", e.0),
                }
            }
            None
        })
        .await
    }

    pub async fn click(&self, e: &Element) {
        self.post(&format!("/element/{}/click", e.0), json!({})).await;
    }

    pub async fn type_text(&self, e: &Element, text: &str) {
        self.post(&format!("/element/{}/value", e.0), json!({"text": text})).await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.try_text(e)
            .await
            .unwrap_or_else(|(error, message)| panic!("webdriver text of {}: {error}: {message}", e.0))
    }

    /// The element's text, or the WebDriver error and its message.
    async fn try_text(&self, e: &Element) -> Result<String, (String, Value)> {
        let text = self.try_call(reqwest::Method::GET, &format!("/element/{}/text", e.0), None).await?;
        Ok(text.as_str().unwrap_or("").into())
    }

    /// Run `script` (a function body; `arguments` holds `args`) and return its value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args})).await
    }

    /// Work inside the iframe `frame` until [`Browser::top`].
    pub async fn enter_frame(&self, frame: &Element) {
        self.post("/frame", json!({"id": {ELEMENT: frame.0}})).await;
    }

    pub async fn top(&self) {
        self.post("/frame", json!({"id": null})).await;
    }

    /// Save the viewport as `<artifacts>/<name>.png` (kept for looking at after the run).
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or("")).expect("PNG");
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("screenshot written");
        path
    }

    /// Wait until `script` returns a truthy value.
    pub async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.execute(script, json!([])).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; then the driver goes.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = reqwest::Client::new().delete(url).timeout(Duration::from_secs(10)).send().await;
                });
            }
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
