//! A fake SMTP server (RFC 5321 subset, plain text on loopback): greeting, `EHLO` advertising
//! `AUTH PLAIN LOGIN`, `AUTH PLAIN` checked against the configured user and password (535 on a
//! mismatch), `MAIL FROM`, `RCPT TO`, `DATA` up to the lone `.` line (dot-unstuffed), `RSET`,
//! `NOOP`, `QUIT`. Accepted messages are recorded; the next messages can be refused with a
//! transient (4xx) or permanent (5xx) reply.

use base64::prelude::{Engine as _, BASE64_STANDARD};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as received (CRLF line ends).
    pub data: String,
}

impl Mail {
    /// A header's value (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with(' ') || line.starts_with('\t') {
                    // Unfolding drops the line break only, not the whitespace after it.
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case(name) {
                    value = Some(v.trim().to_string());
                }
            }
        }
        value
    }

    pub fn body(&self) -> String {
        self.data.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    mails: Vec<Mail>,
    /// Refuse the next `refuse_count` messages at `MAIL FROM` with this reply.
    refuse_count: usize,
    refuse_with: String,
    auth_failures: usize,
}

pub struct FakeSmtp {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeSmtp {
    /// Start on a free loopback port, accepting `user` / `password` for `AUTH PLAIN`.
    pub async fn start(user: &str, password: &str) -> FakeSmtp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let (st, creds) = (state.clone(), (user.to_string(), password.to_string()));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (st, creds) = (st.clone(), creds.clone());
                tokio::spawn(async move {
                    let _ = session(socket, st, creds).await;
                });
            }
        });
        FakeSmtp { addr, state }
    }

    /// `smtp://user:password@127.0.0.1:port` (no TLS: loopback only).
    pub fn url(&self, user: &str, password: &str) -> String {
        format!("smtp://{user}:{password}@{}", self.addr)
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.state.lock().unwrap().mails.clone()
    }

    pub fn auth_failures(&self) -> usize {
        self.state.lock().unwrap().auth_failures
    }

    /// Refuse the next `n` messages with `reply`, e.g. `451 4.3.0 try later` or `550 5.1.1 no`.
    pub fn refuse_next(&self, n: usize, reply: &str) {
        let mut st = self.state.lock().unwrap();
        st.refuse_count = n;
        st.refuse_with = reply.to_string();
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let start = Instant::now();
        loop {
            let m = self.mails();
            if m.len() >= n {
                return m;
            }
            assert!(start.elapsed() < timeout, "timed out waiting for {n} mails; {} arrived", m.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    st: Arc<Mutex<State>>,
    (user, password): (String, String),
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 fake.smtp.test ESMTP ready\r\n").await?;
    let (mut from, mut to): (Option<String>, Vec<String>) = (None, Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "250-fake.smtp.test\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SMTPUTF8".into()
        } else if upper.starts_with("AUTH PLAIN") {
            let given = cmd.split_whitespace().nth(2).unwrap_or_default();
            let decoded = BASE64_STANDARD.decode(given).unwrap_or_default();
            let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
            if parts.len() == 3 && parts[1] == user.as_bytes() && parts[2] == password.as_bytes() {
                "235 2.7.0 Authentication successful".into()
            } else {
                st.lock().unwrap().auth_failures += 1;
                "535 5.7.8 Authentication credentials invalid".into()
            }
        } else if upper.starts_with("MAIL FROM:") {
            let mut s = st.lock().unwrap();
            if s.refuse_count > 0 {
                s.refuse_count -= 1;
                s.refuse_with.clone()
            } else {
                from = Some(cmd[10..].trim().trim_start_matches('<').split('>').next().unwrap_or("").to_string());
                to.clear();
                "250 2.1.0 OK".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                "503 5.5.1 MAIL first".into()
            } else {
                to.push(cmd[8..].trim().trim_start_matches('<').split('>').next().unwrap_or("").to_string());
                "250 2.1.5 OK".into()
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if lines.read_line(&mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                st.lock().unwrap().mails.push(Mail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                });
                "250 2.0.0 OK queued".into()
            }
        } else if upper == "RSET" {
            from = None;
            to.clear();
            "250 2.0.0 OK".into()
        } else if upper == "NOOP" {
            "250 2.0.0 OK".into()
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 command not recognised".into()
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}
