//! A fake of API Gateway's WebSocket API for the widget: browsers connect to its socket port
//! (`ws://.../{stage}?agent=&token=`; the handshake of RFC 6455 and server-to-client text
//! frames, all the widget needs), and the worker pushes through its management API (`POST
//! /{stage}/@connections/{id}`). It checks each push's SigV4 signature for the `execute-api`
//! service with its own implementation of the algorithm (the canonical path encoded twice, as
//! for every service but S3), forwards it as a text frame to the browser, answers 200 for a
//! connection it holds open and 410 (`GoneException`) for any other, and keeps what was pushed.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The stage the fake serves (`https://{api}.execute-api.{region}.amazonaws.com/{stage}`).
pub const STAGE: &str = "live";

#[derive(Debug, Clone)]
pub struct Push {
    pub connection: String,
    pub body: String,
}

/// A browser's connection: its query string, and where its frames go (`None` closes it).
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: String,
    pub query: String,
}

#[derive(Default)]
struct SocketLog {
    open: HashSet<String>,
    live: HashMap<String, mpsc::UnboundedSender<Option<Vec<u8>>>>,
    connections: Vec<Connection>,
    pushes: Vec<Push>,
    gone: usize,
    bad_signatures: Vec<String>,
}

#[derive(Clone)]
pub struct FakeSocketApi {
    addr: SocketAddr,
    socket_addr: SocketAddr,
    log: Arc<Mutex<SocketLog>>,
}

#[derive(Clone)]
struct Keys {
    log: Arc<Mutex<SocketLog>>,
    access_key: String,
    secret_key: String,
    region: String,
}

impl FakeSocketApi {
    /// Accepts requests signed with this key pair for `region`.
    pub async fn start(access_key: &str, secret_key: &str, region: &str) -> FakeSocketApi {
        let log = Arc::new(Mutex::new(SocketLog::default()));
        let keys = Keys {
            log: log.clone(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            region: region.into(),
        };
        let app = Router::new().fallback(manage).with_state(keys);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let socket_addr = listener.local_addr().expect("the bound address");
        let sockets = log.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((stream, _)) = listener.accept().await {
                n += 1;
                tokio::spawn(serve_socket(stream, format!("Fk{n:08}cxyz="), sockets.clone()));
            }
        });
        FakeSocketApi { addr: crate::serve_on_loopback(app).await, socket_addr, log }
    }

    /// Where browsers connect (the stack's `WidgetSocketUrl`).
    pub fn socket_url(&self) -> String {
        format!("ws://{}/{STAGE}", self.socket_addr)
    }

    /// Every connection browsers opened, oldest first.
    pub fn connections(&self) -> Vec<Connection> {
        self.log.lock().unwrap().connections.clone()
    }

    /// API Gateway closes the connection (idle for 10 minutes, or 2 hours old).
    pub fn hang_up(&self, connection: &str) {
        let mut log = self.log.lock().unwrap();
        log.open.remove(connection);
        if let Some(tx) = log.live.remove(connection) {
            let _ = tx.send(None);
        }
    }

    /// The management endpoint, as the stack gives it to the worker.
    pub fn url(&self) -> String {
        format!("http://{}/{STAGE}", self.addr)
    }

    /// A browser connected with this connection id.
    pub fn open(&self, connection: &str) {
        self.log.lock().unwrap().open.insert(connection.into());
    }

    /// The connection closed (API Gateway answers 410 from now on).
    pub fn close(&self, connection: &str) {
        self.log.lock().unwrap().open.remove(connection);
    }

    pub fn pushes(&self) -> Vec<Push> {
        self.log.lock().unwrap().pushes.clone()
    }

    /// Pushes answered 410.
    pub fn gone(&self) -> usize {
        self.log.lock().unwrap().gone
    }

    /// Why requests were refused as badly signed.
    pub fn bad_signatures(&self) -> Vec<String> {
        self.log.lock().unwrap().bad_signatures.clone()
    }
}

async fn manage(State(keys): State<Keys>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let prefix = format!("/{STAGE}/@connections/");
    let Some(encoded) = uri.path().strip_prefix(&prefix) else {
        return (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#).into_response();
    };
    if let Err(why) = verify(&keys, &method, &uri, &headers, &body) {
        keys.log.lock().unwrap().bad_signatures.push(why.clone());
        return (StatusCode::FORBIDDEN, format!(r#"{{"message":"{why}"}}"#)).into_response();
    }
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "").into_response();
    }
    let connection = percent_decode(encoded);
    let mut log = keys.log.lock().unwrap();
    if !log.open.contains(&connection) {
        log.gone += 1;
        return (StatusCode::GONE, r#"{"message":"GoneException"}"#).into_response();
    }
    if let Some(tx) = log.live.get(&connection) {
        let _ = tx.send(Some(text_frame(&body)));
    }
    log.pushes.push(Push { connection, body: String::from_utf8_lossy(&body).into_owned() });
    StatusCode::OK.into_response()
}

/// One browser connection: the opening handshake, then frames pushed to it until it is hung
/// up on or the browser goes (what the browser sends is read and dropped).
async fn serve_socket(mut stream: tokio::net::TcpStream, id: String, log: Arc<Mutex<SocketLog>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        if request.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&request).into_owned();
    let target = text.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
    let key = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_string())
    });
    let Some(key) = key else {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    let mut sha = <Sha1 as Digest>::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut log = log.lock().unwrap();
        log.open.insert(id.clone());
        log.live.insert(id.clone(), tx);
        log.connections.push(Connection { id: id.clone(), query });
    }
    let (mut read, mut write) = stream.into_split();
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(Some(bytes)) => {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            n = read.read(&mut buf) => {
                if matches!(n, Ok(0) | Err(_)) {
                    break;
                }
            }
        }
    }
    let mut log = log.lock().unwrap();
    log.open.remove(&id);
    log.live.remove(&id);
}

/// A server-to-client text frame (unmasked, one fragment).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n < 65536 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// SigV4 as AWS documents it: canonical request, string to sign, signing key, signature.
fn verify(keys: &Keys, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let auth = header("authorization");
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or("not a SigV4 Authorization header")?;
    let mut credential = "";
    let mut signed_headers = "";
    let mut signature = "";
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = v;
        }
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, "aws4_request"] = scope[..] else {
        return Err(format!("malformed credential scope {credential:?}"));
    };
    if access_key != keys.access_key || region != keys.region || service != "execute-api" {
        return Err(format!("wrong key, region or service in {credential:?}"));
    }
    let amz_date = header("x-amz-date");
    if !amz_date.starts_with(date) {
        return Err("x-amz-date is not the scope's date".into());
    }
    if !signed_headers.split(';').any(|h| h == "host") {
        return Err("host is not signed".into());
    }
    let canonical_headers: String = signed_headers
        .split(';')
        .map(|name| format!("{name}:{}\n", header(name).split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        uri_encode(uri.path(), false),
        uri.query().unwrap_or_default(),
        hex::encode(Sha256::digest(body))
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", keys.secret_key).as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    if hex::encode(hmac(&key, string_to_sign.as_bytes())) != signature {
        return Err("signature does not match".into());
    }
    Ok(())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// SigV4's URI encoding of a path (everything but unreserved characters and `/`), applied to
/// the path as sent: the canonical path of services other than S3 is encoded twice.
fn uri_encode(path: &str, encode_slash: bool) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (b == b'/' && !encode_slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
