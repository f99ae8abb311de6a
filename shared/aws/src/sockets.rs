//! The web widget's WebSocket connections on AWS: API Gateway holds the sockets; `$connect`
//! records each one in its conversation's partition (`WS#{connection id}`), and a message
//! logged for the conversation is pushed to every recorded connection through API Gateway's
//! management API (`POST {endpoint}/@connections/{id}`, SigV4 for `execute-api`).
//!
//! Pushes are best effort: the message log is the record, and the widget reads it when it
//! connects and after any gap in sequence numbers. A connection API Gateway reports gone
//! (410) is forgotten; the others expire with API Gateway's two-hour limit (TTL).

use crate::store::{get_s, key_of, n, DynamoStore};
use crate::table::{conv_pk, EXPIRES_AT, SK};
use async_trait::async_trait;
use aws_sdk_dynamodb::config::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use baton_core::model::{Channel, ConversationKey, Millis};
use baton_core::net::encode_unreserved;
use baton_core::ports::{LivePush, LoggedMessage, StoreError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// API Gateway closes a WebSocket after two hours; a record outlives it a little.
const CONNECTION_LIFETIME_SECS: i64 = 2 * 60 * 60 + 5 * 60;
/// One push waits this long for API Gateway (tens of milliseconds when well): a push is best
/// effort, and the effects after it wait meanwhile.
const PUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// API Gateway splits messages over 32 KB into frames; a widget message is far below.
const MAX_PUSH_BYTES: usize = 32 * 1024;

fn socket_sk(connection_id: &str) -> String {
    format!("WS#{connection_id}")
}

impl DynamoStore {
    /// Record a connection of the conversation's widget (`$connect`).
    pub async fn add_socket(
        &self,
        key: &ConversationKey,
        connection_id: &str,
        connected_at: Millis,
    ) -> Result<(), StoreError> {
        let mut item = key_of(conv_pk(key), socket_sk(connection_id));
        item.insert(EXPIRES_AT.into(), n(connected_at.0.div_euclid(1000) + CONNECTION_LIFETIME_SECS));
        self.put_plain(item, "record a widget connection").await
    }

    /// The conversation's recorded connections.
    pub async fn sockets(&self, key: &ConversationKey) -> Result<Vec<String>, StoreError> {
        let conv = conv_pk(key);
        let items = self.query_prefix(&conv, "WS#").await?;
        items.iter().map(|i| get_s(i, SK, &conv).map(|sk| sk.trim_start_matches("WS#").to_string())).collect()
    }

    pub async fn remove_socket(&self, key: &ConversationKey, connection_id: &str) -> Result<(), StoreError> {
        self.client()
            .delete_item()
            .table_name(self.table_name())
            .set_key(Some(key_of(conv_pk(key), socket_sk(connection_id))))
            .send()
            .await
            .map_err(|e| crate::store::unavailable("forget a widget connection", &e))?;
        Ok(())
    }
}

/// Where API Gateway's management API is and how to sign for it.
#[derive(Clone)]
pub struct SocketEndpoint {
    /// `https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`, no trailing slash.
    pub url: String,
    pub region: String,
    pub credentials: SharedCredentialsProvider,
}

impl SocketEndpoint {
    /// Signing with the credentials in the environment: on Lambda, the function's role.
    pub fn with_environment_credentials(url: impl Into<String>, region: impl Into<String>) -> SocketEndpoint {
        SocketEndpoint {
            url: url.into(),
            region: region.into(),
            credentials: SharedCredentialsProvider::new(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            ),
        }
    }
}

/// What API Gateway said to one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Delivered,
    /// The connection is closed (410): forget it.
    Gone,
}

/// API Gateway's management API: sends to one connection.
#[derive(Clone)]
pub struct SocketClient {
    endpoint: SocketEndpoint,
    http: reqwest::Client,
}

impl SocketClient {
    pub fn new(endpoint: SocketEndpoint) -> SocketClient {
        let http = reqwest::Client::builder().timeout(PUSH_TIMEOUT).build().unwrap_or_default();
        SocketClient { endpoint: SocketEndpoint { url: endpoint.url.trim_end_matches('/').into(), ..endpoint }, http }
    }

    /// `POST @connections/{id}` with `body`, signed.
    pub async fn post(&self, connection_id: &str, body: &[u8]) -> Result<Pushed, String> {
        // The id as one path segment: it ends in `=`.
        let url = format!("{}/@connections/{}", self.endpoint.url, encode_unreserved(connection_id));
        let credentials = self
            .endpoint
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| format!("no AWS credentials to sign with: {e}"))?;
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.endpoint.region)
            .name("execute-api")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into();
        let headers = [("content-type", "application/json")];
        let signable = SignableRequest::new("POST", &url, headers.iter().copied(), SignableBody::Bytes(body))
            .map_err(|e| format!("cannot sign {url}: {e}"))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| format!("signing: {e}"))?.into_parts();
        let mut request = self.http.post(&url).header("content-type", "application/json").body(body.to_vec());
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| format!("API Gateway unreachable: {e}"))?;
        match response.status().as_u16() {
            200..=299 => Ok(Pushed::Delivered),
            410 => Ok(Pushed::Gone),
            status => {
                let text = response.text().await.unwrap_or_default();
                Err(format!("API Gateway answered {status}: {}", text.chars().take(200).collect::<String>()))
            }
        }
    }
}

/// Pushes logged messages to the conversation's WebSocket connections.
#[derive(Clone)]
pub struct SocketPush {
    store: Arc<DynamoStore>,
    client: SocketClient,
}

impl SocketPush {
    pub fn new(store: Arc<DynamoStore>, endpoint: SocketEndpoint) -> SocketPush {
        SocketPush { store, client: SocketClient::new(endpoint) }
    }
}

#[async_trait]
impl LivePush for SocketPush {
    async fn push(&self, key: &ConversationKey, message: &LoggedMessage) {
        // Only the widget opens sockets (Agent API conversations are logged too).
        if key.channel != Channel::Widget {
            return;
        }
        let body = match serde_json::to_vec(message) {
            Ok(b) if b.len() <= MAX_PUSH_BYTES => b,
            // The widget reads it from the log when it sees the gap in sequence numbers.
            _ => return,
        };
        let connections = match self.store.sockets(key).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(conversation = %key, error = %e, "widget connections unreadable; the widget reads the log");
                return;
            }
        };
        for id in connections {
            match self.client.post(&id, &body).await {
                Ok(Pushed::Delivered) => {}
                Ok(Pushed::Gone) => {
                    if let Err(e) = self.store.remove_socket(key, &id).await {
                        tracing::warn!(conversation = %key, error = %e, "a closed widget connection stays recorded");
                    }
                }
                Err(e) => tracing::warn!(conversation = %key, error = %e, "push to a widget connection failed"),
            }
        }
    }
}
