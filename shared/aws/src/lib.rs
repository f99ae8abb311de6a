//! AWS adapters for the Lambda deployment:
//!
//! - [`DynamoStore`]: the [`Store`](baton_core::ports::Store) on one DynamoDB table
//!   (sessions with their outbox, seen event ids, agents, tokens, desk links, desk status,
//!   trace, the widget's message log), plus the sweeper's [`DynamoStore::sessions_due`].
//! - [`SqsEventQueue`]: the [`EventQueue`](baton_core::ports::EventQueue) on an SQS FIFO
//!   queue, one message group per conversation.
//! - [`SqsTimers`]: the [`Timers`](baton_core::ports::Timers) on a standard SQS queue with
//!   delayed messages, re-armed for waits longer than SQS allows.
//!
//! The table layout is described in [`table`]; [`create_table`] builds it exactly as the
//! production template does, for tests and local use. [`redrive()`] moves messages from a
//! dead-letter queue back to their queue (`baton redrive`).

mod kv;
mod messages;
mod outbox;
mod privacy;
mod queue;
mod redrive;
mod secrets;
mod sockets;
mod store;
pub mod table;
mod timers;

/// The SDK crates, re-exported so callers build clients of exactly the versions used here.
pub use aws_sdk_dynamodb;
pub use aws_sdk_sqs;
pub use aws_sdk_ssm;
pub use secrets::SsmSecrets;
pub use sockets::{Pushed, SocketClient, SocketEndpoint, SocketPush};

pub use queue::{create_event_queue, dedup_id, group_id, parse_event, MessageError, SqsEventQueue};
pub use redrive::{redrive, RedriveError};
pub use store::{DynamoStore, SEEN_RETENTION_SECS};
pub use table::create_table;
pub use timers::{
    create_timer_queue, delay_seconds, ArmedTimers, SqsTimers, StoredTimer, TimerError, TimerMessage, TimerOutcome,
    TIMER_SCHEMA,
};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// The SDK configuration, loaded once from the environment: region, credentials (the
/// Lambda role, or `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`) and `AWS_ENDPOINT_URL`
/// (moto or LocalStack locally), with [`https_client`] for every call.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).http_client(https_client()).load().await
}

/// The HTTPS client of every SDK client: rustls on ring, the TLS stack the rest of Baton
/// uses, trusting the Mozilla root certificates compiled into the binary. The SDK's default
/// client reads and parses the whole system certificate store when it is built, which was
/// about half of a function's init time (BENCHMARKS.md, "Cold start"). The connector (and
/// with it the parsed roots) is built once, on the first request: see [`NoEagerConnector`].
pub fn https_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let mut trust = TrustStore::empty().with_native_roots(false);
    for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        trust.add_pem_certificate(pem_certificate(der));
    }
    let context = match TlsContext::builder().with_trust_store(trust).build() {
        Ok(c) => c,
        Err(e) => {
            // Not expected with the compiled-in roots; the system store still works.
            tracing::warn!(error = %e, "compiled-in root certificates refused; using the system store");
            TlsContext::default()
        }
    };
    let client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https();
    aws_sdk_dynamodb::config::SharedHttpClient::new(NoEagerConnector(client))
}

/// The SDK's hyper client, minus the connector it builds and throws away whenever an SDK
/// client is constructed (`validate_base_client_config`, meant to load the system
/// certificates early). Baton constructs four SDK clients in init (DynamoDB, SQS, SSM and the
/// configuration loader's STS), so that was four parses of every root certificate, a quarter
/// of a function's init, none of them kept: the first request builds and caches its own
/// connector either way.
#[derive(Debug)]
struct NoEagerConnector(aws_sdk_dynamodb::config::SharedHttpClient);

impl aws_smithy_runtime_api::client::http::HttpClient for NoEagerConnector {
    fn http_connector(
        &self,
        settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
        components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
    ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// One DER certificate as PEM, the form the SDK's trust store takes.
fn pem_certificate(der: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem.into_bytes()
}

/// The SSM client (agent secrets) from the environment.
pub async fn ssm_client_from_env() -> aws_sdk_ssm::Client {
    aws_sdk_ssm::Client::new(&sdk_config().await)
}

/// Both SDK clients from one shared config.
pub async fn clients_from_env() -> (aws_sdk_dynamodb::Client, aws_sdk_sqs::Client) {
    let config = sdk_config().await;
    (aws_sdk_dynamodb::Client::new(&config), aws_sdk_sqs::Client::new(&config))
}

/// Describe an SDK error for logs and `StoreError`/`QueueError` messages: the service's
/// error code and message, or the transport failure. Request and response bodies (which
/// may hold user text or agent secrets) are never included.
pub fn describe_sdk_error<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => DisplayErrorContext(e).to_string(),
            }
        }
        SdkError::TimeoutError(_) => "request timed out".into(),
        other => DisplayErrorContext(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn compiled_in_roots_are_wrapped_as_pem_unchanged() {
        let der: &[u8] = &webpki_root_certs::TLS_SERVER_ROOT_CERTS[0];
        let pem = String::from_utf8(pem_certificate(der)).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n") && pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(body).unwrap(), der);
        assert!(webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() > 100);
    }
}
