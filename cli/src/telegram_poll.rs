//! Telegram without a public URL: `baton serve` fetches the bot's updates with
//! `getUpdates` (long polling) for agents whose Telegram channel has `poll = true`, and
//! queues them exactly as the webhook would. The offset is kept in the store, and updates
//! are deduplicated on `update_id`, so a restart neither loses nor repeats one.

use baton_connectors::telegram::TelegramClient;
use baton_core::model::Millis;
use baton_core::ports::DeliveryError;
use baton_runtime::channels::telegram_event;
use baton_runtime::media::{LinkBase, MediaLinks};
use baton_runtime::Ports;
use std::time::Duration;

/// Seconds Telegram holds a `getUpdates` call open when there is nothing new.
const LONG_POLL_SECS: u32 = 25;
/// Wait after a failed call before trying again.
const BACKOFF: Duration = Duration::from_secs(5);
/// Wait after credentials were refused or a webhook is set (a person must act).
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);

/// How often the agents are re-read for Telegram channels that should be polled.
const AGENTS_RESCAN: Duration = Duration::from_secs(10);

/// Runs one [`Poller`] per agent whose Telegram channel has `poll = true`, picking up
/// agents applied while the server runs; a poller stops when its agent stops polling.
/// `links`: how placeholders link to files, and the base URL of those links.
pub async fn supervise(
    ports: Ports,
    client: TelegramClient,
    links: (MediaLinks, String),
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let running: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Default::default();
    loop {
        if let Ok(agents) = ports.store.list_agents().await {
            for agent in agents.into_iter().filter(|a| a.channels.telegram.as_ref().is_some_and(|t| t.poll)) {
                let mut set = running.lock().unwrap_or_else(|p| p.into_inner());
                if set.insert(agent.id.clone()) {
                    let poller = Poller::new(ports.clone(), client.clone(), agent.id.clone(), links.clone());
                    let (running, stop) = (running.clone(), stop.clone());
                    tokio::spawn(async move {
                        poller.run(stop).await;
                        running.lock().unwrap_or_else(|p| p.into_inner()).remove(&agent.id);
                    });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(AGENTS_RESCAN) => {}
            _ = stop.changed() => return,
        }
    }
}

pub struct Poller {
    ports: Ports,
    client: TelegramClient,
    agent: String,
    links: (MediaLinks, String),
}

impl Poller {
    pub fn new(ports: Ports, client: TelegramClient, agent: String, links: (MediaLinks, String)) -> Self {
        Poller { ports, client, agent, links }
    }

    fn offset_key(&self) -> String {
        format!("telegram-offset:{}", self.agent)
    }

    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        tracing::info!(agent = %self.agent, "polling Telegram for updates");
        loop {
            let pause = tokio::select! {
                p = self.poll_once() => p,
                _ = stop.changed() => return,
            };
            if pause == Some(Duration::MAX) {
                tracing::info!(agent = %self.agent, "Telegram polling stopped: the agent no longer polls");
                return;
            }
            if let Some(pause) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// One `getUpdates` round; returns how long to pause before the next one, if at all
    /// (`Duration::MAX`: stop, the agent no longer polls).
    async fn poll_once(&self) -> Option<Duration> {
        let agent = match self.ports.store.get_agent(&self.agent).await {
            Ok(Some(a)) => a,
            Ok(None) => return Some(Duration::MAX),
            Err(e) => {
                tracing::warn!(agent = %self.agent, error = %e, "cannot read the agent");
                return Some(BACKOFF);
            }
        };
        let Some(cfg) = agent.channels.telegram.as_ref().filter(|t| t.poll) else {
            return Some(Duration::MAX);
        };
        let now = self.ports.clock.now();
        let offset = match self.ports.kv.get(&self.offset_key(), now).await {
            Ok(v) => v.and_then(|v| v.parse::<i64>().ok()),
            Err(e) => {
                tracing::warn!(agent = %self.agent, error = %e, "cannot read the Telegram offset");
                return Some(BACKOFF);
            }
        };
        let polled = match self.client.get_updates(cfg, offset, LONG_POLL_SECS).await {
            Ok(p) => p,
            Err(e @ DeliveryError::Retryable { .. }) => {
                tracing::warn!(agent = %self.agent, error = %e, "getUpdates failed; retrying");
                return Some(BACKOFF);
            }
            Err(e) => {
                self.ports.alerts.raise(format!(
                    "agent {}: Telegram getUpdates refused: {e} (is a webhook set? `baton channels telegram delete-webhook`)",
                    self.agent
                ));
                return Some(REFUSED_BACKOFF);
            }
        };
        let now = self.ports.clock.now();
        let links = LinkBase { links: &self.links.0, base: Some(self.links.1.clone()), now };
        let events: Vec<_> =
            polled.updates.iter().filter_map(|u| telegram_event(&self.agent, u, now, &links)).collect();
        if !events.is_empty() {
            // Queued before the offset moves: a crash in between repeats updates, which dedupe.
            if let Err(e) = self.ports.queue.enqueue(events).await {
                tracing::warn!(agent = %self.agent, error = %e, "cannot queue Telegram updates");
                return Some(BACKOFF);
            }
        }
        for id in polled.updates.iter().filter_map(|u| u.callback_query_id.as_deref()) {
            if let Err(e) = self.client.answer_callback(cfg, id).await {
                tracing::debug!(agent = %self.agent, error = %e, "answerCallbackQuery failed");
            }
        }
        if let Some(next) = polled.next_offset {
            let forever = Millis(i64::MAX / 2);
            if let Err(e) = self.ports.kv.put(&self.offset_key(), &next.to_string(), forever).await {
                tracing::warn!(agent = %self.agent, error = %e, "cannot store the Telegram offset");
            }
        }
        None
    }
}
