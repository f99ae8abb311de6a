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
mod queue;
mod redrive;
mod secrets;
mod store;
pub mod table;
mod timers;

/// The SDK crates, re-exported so callers build clients of exactly the versions used here.
pub use aws_sdk_dynamodb;
pub use aws_sdk_sqs;
pub use aws_sdk_ssm;
pub use secrets::SsmSecrets;

pub use queue::{create_event_queue, dedup_id, group_id, parse_event, MessageError, SqsEventQueue};
pub use redrive::{redrive, RedriveError};
pub use store::{DynamoStore, DEFAULT_MESSAGE_RETENTION, SEEN_RETENTION_SECS};
pub use table::create_table;
pub use timers::{create_timer_queue, delay_seconds, SqsTimers, TimerError, TimerMessage, TimerOutcome, TIMER_SCHEMA};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// The SDK configuration, loaded once from the environment: region, credentials (the
/// Lambda role, or `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`) and `AWS_ENDPOINT_URL`
/// (moto or LocalStack locally).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
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
