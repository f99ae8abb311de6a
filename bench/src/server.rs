//! A `baton serve` child process for the long runs (`soak`, `kill`, `outage`): its agents
//! applied to a fresh data file, serving on a free loopback port, SIGKILLed and restarted on
//! demand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// A `baton serve` child process on a fixed port and data file; its stderr goes to a log
/// file, appended across restarts.
pub struct Server {
    baton: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    child: Child,
    health: reqwest::Client,
    /// Arguments of `baton serve` besides the address, data file and rate limits.
    extra: Vec<String>,
    /// The agent token `baton agents apply` printed (shown once).
    pub token: String,
}

impl Server {
    /// Store the agents of `agents_toml` in a fresh data file in `dir`, then start serving
    /// on a free port with `extra` arguments.
    pub async fn start(baton: &Path, dir: &Path, agents_toml: &str, extra: &[&str]) -> Server {
        let data = dir.join("baton.sqlite");
        let agents = dir.join("agents.toml");
        std::fs::write(&agents, agents_toml).expect("agents file");
        let out = std::process::Command::new(baton)
            .args(["agents", "apply"])
            .arg(&agents)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", baton.display()));
        assert!(out.status.success(), "baton agents apply: {}", String::from_utf8_lossy(&out.stderr));
        let printed = String::from_utf8_lossy(&out.stdout);
        let token = printed.split("(shown once): ").nth(1).map(|t| t.trim().to_string()).expect("a token");
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let health = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("client");
        let log = dir.join("serve.log");
        let child = spawn(baton, &data, &log, port, &extra).expect("baton serve");
        let server = Server { baton: baton.to_path_buf(), data, log, port, child, health, extra, token };
        if !server.healthy_within(Duration::from_secs(30)).await {
            server.fail("baton serve did not start");
        }
        server
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn healthy_within(&self, limit: Duration) -> bool {
        let url = format!("{}/healthz", self.base());
        let started = Instant::now();
        while started.elapsed() < limit {
            if matches!(self.health.get(&url).send().await, Ok(r) if r.status() == 200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// SIGKILL the server and start it again on the same port and data file; the time from
    /// the kill until /healthz answers.
    pub async fn kill_and_restart(&mut self) -> Duration {
        let killed = Instant::now();
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        match spawn(&self.baton, &self.data, &self.log, self.port, &self.extra) {
            Ok(c) => self.child = c,
            Err(e) => self.fail(&format!("baton serve did not restart: {e}")),
        }
        if !self.healthy_within(Duration::from_secs(60)).await {
            self.fail("baton serve did not become healthy after a restart");
        }
        killed.elapsed()
    }

    /// Give up the whole run: the process is killed first, since `exit` runs no destructors.
    pub fn fail(&self, why: &str) -> ! {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        eprintln!("{why}; its log: {}", self.log.display());
        eprintln!("{}", log_tail(&self.log, 20));
        std::process::exit(2);
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Lines of the server's log mentioning dead-lettered effects, and panics.
    pub fn log_findings(&self) -> (usize, usize) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        (log.lines().filter(|l| l.contains("dead-lettered")).count(), log.matches("panicked").count())
    }
}

fn spawn(baton: &Path, data: &Path, log: &Path, port: u16, extra: &[String]) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    tokio::process::Command::new(baton)
        .args(["serve", "--no-example", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--data")
        .arg(data)
        // Every simulated user comes from 127.0.0.1.
        .args(["--rate-per-ip", "1000000", "--rate-per-conversation", "1000"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
}

fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
