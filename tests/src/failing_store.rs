//! A `Store` that refuses the commits of some events (as an unavailable store would) and
//! passes everything else to the store it wraps: for the paths taken when a write fails. It
//! also counts the desk links read by handoff, for tests of what a drain reads.

use async_trait::async_trait;
use baton_core::agent::Agent;
use baton_core::model::{ConversationKey, Millis};
use baton_core::ports::{
    Commit, CommitOutcome, ConversationData, DeskLink, DeskStatusRecord, OutboxItem, Store, StoreError, TraceEntry,
    VersionedSession,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct FailingCommits {
    inner: Arc<dyn Store>,
    /// Commits of events whose id starts with this fail...
    prefix: String,
    /// ...this many more times.
    left: AtomicUsize,
    link_reads: AtomicUsize,
}

impl FailingCommits {
    pub fn new(inner: Arc<dyn Store>, prefix: &str, times: usize) -> FailingCommits {
        FailingCommits {
            inner,
            prefix: prefix.to_string(),
            left: AtomicUsize::new(times),
            link_reads: AtomicUsize::new(0),
        }
    }

    /// Commits refused so far are `times` minus this.
    pub fn left(&self) -> usize {
        self.left.load(Ordering::SeqCst)
    }

    /// Calls of `desk_link_for_handoff` so far.
    pub fn link_reads(&self) -> usize {
        self.link_reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Store for FailingCommits {
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let refuse = commit.event_id.starts_with(&self.prefix)
            && self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if refuse {
            return Err(StoreError::Unavailable("the store is down (test)".into()));
        }
        self.inner.commit(commit).await
    }
    fn timer_carried(&self, key: &ConversationKey, version: u64) -> bool {
        self.inner.timer_carried(key, version)
    }

    async fn get_agent(&self, id: &str) -> Result<Option<Agent>, StoreError> {
        self.inner.get_agent(id).await
    }
    async fn put_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        self.inner.put_agent(agent).await
    }
    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        self.inner.list_agents().await
    }
    async fn add_token(&self, agent: &str, token_hash: &str, created_at: Millis) -> Result<(), StoreError> {
        self.inner.add_token(agent, token_hash, created_at).await
    }
    async fn revoke_tokens(&self, agent: &str, keep: Option<&str>) -> Result<u64, StoreError> {
        self.inner.revoke_tokens(agent, keep).await
    }
    async fn token_hashes(&self, agent: &str) -> Result<Vec<String>, StoreError> {
        self.inner.token_hashes(agent).await
    }
    async fn load_session(&self, key: &ConversationKey) -> Result<Option<VersionedSession>, StoreError> {
        self.inner.load_session(key).await
    }
    async fn is_seen(&self, key: &ConversationKey, event_id: &str) -> Result<bool, StoreError> {
        self.inner.is_seen(key, event_id).await
    }
    async fn pending_effects(&self, key: &ConversationKey) -> Result<Vec<OutboxItem>, StoreError> {
        self.inner.pending_effects(key).await
    }
    async fn complete_effect(
        &self,
        key: &ConversationKey,
        effect_id: &str,
        trace: TraceEntry,
        keep_until: Millis,
    ) -> Result<(), StoreError> {
        self.inner.complete_effect(key, effect_id, trace, keep_until).await
    }
    async fn defer_effect(
        &self,
        key: &ConversationKey,
        effect_id: &str,
        attempts: u32,
        next_attempt_at: Millis,
        trace: TraceEntry,
        keep_until: Millis,
    ) -> Result<(), StoreError> {
        self.inner.defer_effect(key, effect_id, attempts, next_attempt_at, trace, keep_until).await
    }
    async fn conversations_with_due_effects(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<ConversationKey>, StoreError> {
        self.inner.conversations_with_due_effects(now, limit).await
    }
    async fn watch_pending(&self, key: &ConversationKey) -> Result<(), StoreError> {
        self.inner.watch_pending(key).await
    }
    async fn put_desk_link(&self, link: &DeskLink, keep_until: Millis) -> Result<(), StoreError> {
        self.inner.put_desk_link(link, keep_until).await
    }
    async fn desk_link(&self, agent: &str, desk_conversation_id: &str) -> Result<Option<DeskLink>, StoreError> {
        self.inner.desk_link(agent, desk_conversation_id).await
    }
    async fn desk_link_for_handoff(&self, handoff_id: &str) -> Result<Option<DeskLink>, StoreError> {
        self.link_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.desk_link_for_handoff(handoff_id).await
    }
    async fn set_desk_status(&self, agent: &str, status: &DeskStatusRecord) -> Result<(), StoreError> {
        self.inner.set_desk_status(agent, status).await
    }
    async fn desk_status(&self, agent: &str) -> Result<Option<DeskStatusRecord>, StoreError> {
        self.inner.desk_status(agent).await
    }
    async fn trace(&self, key: &ConversationKey) -> Result<Vec<TraceEntry>, StoreError> {
        self.inner.trace(key).await
    }
    async fn export_conversation(&self, key: &ConversationKey) -> Result<ConversationData, StoreError> {
        self.inner.export_conversation(key).await
    }
    async fn erase_conversation(&self, key: &ConversationKey) -> Result<u64, StoreError> {
        self.inner.erase_conversation(key).await
    }
}
