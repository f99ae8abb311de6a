//! `Store` on SQLite. `commit` is the transactional outbox: session, seen id and effects are
//! written in one transaction guarded by the session's version. Trace lines follow the write
//! they describe, into the trace file (`trace.rs`): batched, at most 100 ms later; a crash
//! loses at most the last batches of lines, never state.

use crate::{decode, encode, limit_param, lock, parse_key, sql, to_i64, Db};
use async_trait::async_trait;
use baton_core::agent::Agent;
use baton_core::effect::{PendingEffect, EFFECT_SCHEMA};
use baton_core::model::{ConversationKey, Millis};
use baton_core::ports::{
    BatchCommit, Commit, CommitOutcome, Completion, ConversationData, DeskLink, DeskStatusRecord, EventWrites,
    OutboxItem, Store, StoreError, TraceEntry, VersionedSession,
};
use rusqlite::{params, Connection, OptionalExtension};

fn link_from_row(agent: String, desk_id: String, handoff: String, conv: String) -> Result<DeskLink, StoreError> {
    Ok(DeskLink { agent, desk_conversation_id: desk_id, handoff_id: handoff, conversation: parse_key(&conv)? })
}

type LinkRow = (String, String, String, String);

fn link_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LinkRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn delete_effect(c: &Connection, conv: &str, effect_id: &str) -> Result<usize, StoreError> {
    c.prepare_cached("DELETE FROM outbox WHERE conversation = ?1 AND effect_id = ?2")
        .map_err(sql)?
        .execute(params![conv, effect_id])
        .map_err(sql)
}

/// The session row as written: version, JSON, `updated_at`, `keep_until`.
type SessionRow<'a> = (u64, &'a str, i64, i64);

/// One event of a commit as written: its id, when it was stepped, and its effects (id, JSON).
struct EventRows {
    event_id: String,
    at: Millis,
    effects: Vec<(String, String)>,
}

/// One commit's checks, then its writes: a refused commit returns before writing anything.
fn apply_commit(
    tx: &Connection,
    conv: &str,
    events: &[EventRows],
    expected: u64,
    (version, session_json, updated_at, keep_until): SessionRow<'_>,
) -> Result<CommitOutcome, StoreError> {
    let mut seen = tx.prepare_cached("SELECT EXISTS(SELECT 1 FROM seen WHERE event_id = ?1)").map_err(sql)?;
    for e in events {
        if seen.query_row([&e.event_id], |r| r.get::<_, bool>(0)).map_err(sql)? {
            return Ok(CommitOutcome::AlreadySeen);
        }
    }
    let current: Option<i64> = tx
        .prepare_cached("SELECT version FROM sessions WHERE conversation = ?1")
        .map_err(sql)?
        .query_row([conv], |r| r.get(0))
        .optional()
        .map_err(sql)?;
    if u64::try_from(current.unwrap_or(0)).ok() != Some(expected) {
        return Ok(CommitOutcome::VersionConflict);
    }
    tx.prepare_cached(
        "INSERT INTO sessions(conversation, version, json, updated_at, keep_until) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(conversation) DO UPDATE SET
           version = excluded.version, json = excluded.json, updated_at = excluded.updated_at,
           keep_until = excluded.keep_until",
    )
    .map_err(sql)?
    .execute(params![conv, to_i64(version, "session version")?, session_json, updated_at, keep_until])
    .map_err(sql)?;
    let mut mark =
        tx.prepare_cached("INSERT INTO seen(event_id, conversation, at) VALUES (?1, ?2, ?3)").map_err(sql)?;
    // A new effect is due at once: its first attempt follows the commit.
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO outbox(conversation, seq, effect_id, schema, json, attempts, next_attempt_at)
             VALUES (?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox WHERE conversation = ?2), ?1, ?3, ?4, 0, ?5)",
        )
        .map_err(sql)?;
    // The outbox is keyed by conversation and seq: an effect id is kept unique by a look
    // at the conversation's few rows, not by an index of every id (a random page per put).
    let mut taken = tx
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM outbox WHERE conversation = ?1 AND effect_id = ?2)")
        .map_err(sql)?;
    for e in events {
        mark.execute(params![e.event_id, conv, e.at.0]).map_err(sql)?;
        // The event leaves the queue with the commit that applies it: one write per event
        // instead of two, and never applied while still queued.
        crate::queue::unqueue(tx, conv, &e.event_id)?;
        for (id, json) in &e.effects {
            if taken.query_row(params![conv, id], |r| r.get::<_, bool>(0)).map_err(sql)? {
                return Err(StoreError::Unavailable(format!("effect {id} is already in the outbox")));
            }
            insert.execute(params![id, conv, EFFECT_SCHEMA, json, e.at.0]).map_err(sql)?;
        }
    }
    Ok(CommitOutcome::Committed { version })
}

#[async_trait]
impl Store for Db {
    async fn get_agent(&self, id: &str) -> Result<Option<Agent>, StoreError> {
        // The worker reads the agent several times per event: reading and decoding its JSON
        // each time was a tenth of the CPU under load. The row's revision (new whenever the
        // JSON is written, by any process) is still read every time, and the JSON only when
        // it differs from the decoded copy's.
        let cached = lock(&self.inner.decoded_agents).get(id).map(|(rev, _)| *rev);
        let Some((rev, json)) = self.agent_row(id, cached).await? else { return Ok(None) };
        let json = match json {
            Some(json) => json,
            None => {
                if let Some((cached_rev, agent)) = lock(&self.inner.decoded_agents).get(id) {
                    if *cached_rev == rev {
                        return Ok(Some(agent.clone()));
                    }
                }
                // Another reader replaced the decoded copy meanwhile: read the JSON.
                let Some((_, Some(json))) = self.agent_row(id, None).await? else { return Ok(None) };
                json
            }
        };
        let agent: Agent = decode(&format!("agent {id}"), &json)?;
        lock(&self.inner.decoded_agents).insert(id.to_string(), (rev, agent.clone()));
        Ok(Some(agent))
    }

    async fn put_agent(&self, agent: &Agent) -> Result<(), StoreError> {
        let id = agent.id.clone();
        let json = encode(agent)?;
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO agents(id, json) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET json = excluded.json",
            )
            .map_err(sql)?
            .execute(params![id, json])
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT id, json FROM agents ORDER BY id").map_err(sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, json) = row.map_err(sql)?;
                out.push(decode(&format!("agent {id}"), &json)?);
            }
            Ok(out)
        })
        .await
    }

    async fn add_token(&self, agent: &str, token_hash: &str, created_at: Millis) -> Result<(), StoreError> {
        let agent = agent.to_string();
        let hash = token_hash.to_string();
        self.write(move |c| {
            let inserted = c
                .prepare_cached("INSERT OR IGNORE INTO tokens(agent, hash, created_at) VALUES (?1, ?2, ?3)")
                .map_err(sql)?
                .execute(params![agent, hash, created_at.0])
                .map_err(sql)?;
            if inserted == 0 {
                // Adding the same token again is fine; the same hash for another agent is not.
                let owner: Option<String> = c
                    .query_row("SELECT agent FROM tokens WHERE hash = ?1", [&hash], |r| r.get(0))
                    .optional()
                    .map_err(sql)?;
                if owner.as_deref() != Some(agent.as_str()) {
                    return Err(StoreError::Unavailable("this token is already registered to another agent".into()));
                }
            }
            Ok(())
        })
        .await
    }

    async fn revoke_tokens(&self, agent: &str, keep: Option<&str>) -> Result<u64, StoreError> {
        let agent = agent.to_string();
        let keep = keep.map(str::to_string);
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM tokens WHERE agent = ?1 AND (?2 IS NULL OR hash <> ?2)")
                .map_err(sql)?
                .execute(params![agent, keep])
                .map_err(sql)?;
            Ok(n as u64)
        })
        .await
    }

    async fn token_hashes(&self, agent: &str) -> Result<Vec<String>, StoreError> {
        let agent = agent.to_string();
        self.lookup(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT hash FROM tokens WHERE agent = ?1 ORDER BY created_at, rowid").map_err(sql)?;
            let rows = stmt.query_map([&agent], |r| r.get(0)).map_err(sql)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(sql)
        })
        .await
    }

    async fn load_session(&self, key: &ConversationKey) -> Result<Option<VersionedSession>, StoreError> {
        let conv = key.to_string();
        self.lookup(move |c| {
            let row: Option<(i64, String)> = c
                .prepare_cached("SELECT version, json FROM sessions WHERE conversation = ?1")
                .map_err(sql)?
                .query_row([&conv], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(sql)?;
            let Some((version, json)) = row else {
                return Ok(None);
            };
            let version = u64::try_from(version).map_err(|_| StoreError::Corrupt {
                key: conv.clone(),
                message: format!("negative session version {version}"),
            })?;
            Ok(Some(VersionedSession { session: decode(&conv, &json)?, version }))
        })
        .await
    }

    /// Seen ids are one table here, whatever the conversation.
    async fn is_seen(&self, _key: &ConversationKey, event_id: &str) -> Result<bool, StoreError> {
        let id = event_id.to_string();
        self.lookup(move |c| {
            c.prepare_cached("SELECT EXISTS(SELECT 1 FROM seen WHERE event_id = ?1)")
                .map_err(sql)?
                .query_row([&id], |r| r.get(0))
                .map_err(sql)
        })
        .await
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        self.commit_after(Vec::new(), commit).await
    }

    async fn commit_after(&self, done: Vec<Completion>, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let Commit { expected_version, session, event_id, effects, trace, keep_until } = commit;
        let events = vec![EventWrites { event_id, effects, trace }];
        self.commit_batch_after(done, BatchCommit { expected_version, session, events, keep_until }).await
    }

    fn commits_batches(&self) -> bool {
        true
    }

    /// The completions and the commit in one transaction; the completions stay written when
    /// the commit itself is refused (seen, or a version conflict), as the port promises.
    async fn commit_batch_after(&self, done: Vec<Completion>, batch: BatchCommit) -> Result<CommitOutcome, StoreError> {
        let conv = batch.session.key.to_string();
        let session_json = encode(&batch.session)?;
        let updated_at = batch.session.updated_at.0;
        let mut traces = Vec::with_capacity(batch.events.len());
        let mut events = Vec::with_capacity(batch.events.len());
        for e in batch.events {
            let effects =
                e.effects.iter().map(|f| Ok((f.id.clone(), encode(f)?))).collect::<Result<_, StoreError>>()?;
            traces.push((e.trace.at, encode(&e.trace)?));
            events.push(EventRows { event_id: e.event_id, at: e.trace.at, effects });
        }
        let done = done
            .into_iter()
            .map(|c| Ok((c.effect_id, c.trace.at, encode(&c.trace)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let keep_until = batch.keep_until.0;
        let expected = batch.expected_version;
        let new_version =
            expected.checked_add(1).ok_or_else(|| StoreError::Unavailable("session version overflow".into()))?;
        let trace_conv = conv.clone();
        let write = self.write(move |c| {
            let tx = c.savepoint().map_err(sql)?;
            let mut completed = Vec::with_capacity(done.len());
            for (id, at, json) in done {
                if delete_effect(&tx, &conv, &id)? > 0 {
                    completed.push((at, json));
                }
            }
            let row = (new_version, session_json.as_str(), updated_at, keep_until);
            let outcome = apply_commit(&tx, &conv, &events, expected, row)?;
            // A refused commit wrote nothing of its own (its checks come before its writes).
            tx.commit().map_err(sql)?;
            Ok((outcome, completed))
        });
        let (outcome, completed) = write.await?;
        for (at, json) in completed {
            self.trace_line(trace_conv.clone(), at, json);
        }
        if matches!(outcome, CommitOutcome::Committed { .. }) {
            for (at, json) in traces {
                self.trace_line(trace_conv.clone(), at, json);
            }
        }
        Ok(outcome)
    }

    async fn pending_effects(&self, key: &ConversationKey) -> Result<Vec<OutboxItem>, StoreError> {
        let conv = key.to_string();
        self.lookup(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT effect_id, json, attempts, next_attempt_at FROM outbox
                     WHERE conversation = ?1 ORDER BY seq",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map([&conv], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
                })
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, json, attempts, next) = row.map_err(sql)?;
                let effect: PendingEffect = decode(&format!("effect {id}"), &json)?;
                out.push(OutboxItem {
                    effect,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    next_attempt_at: Millis(next),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Deletes the outbox row and appends `trace` in one transaction. When the row is already
    /// gone (completed by a concurrent run), nothing is written, so the trace stays truthful.
    async fn complete_effect(
        &self,
        key: &ConversationKey,
        effect_id: &str,
        trace: TraceEntry,
        // The embedded store purges whole conversations after their retention.
        _keep_until: Millis,
    ) -> Result<(), StoreError> {
        let conv = key.to_string();
        let id = effect_id.to_string();
        let trace_json = encode(&trace)?;
        let deleted = self.write(move |c| delete_effect(c, &conv, &id)).await?;
        if deleted > 0 {
            self.trace_line(key.to_string(), trace.at, trace_json);
        }
        Ok(())
    }

    /// Records a failed attempt and when to retry; like `complete_effect`, a missing row
    /// writes nothing.
    async fn defer_effect(
        &self,
        key: &ConversationKey,
        effect_id: &str,
        attempts: u32,
        next_attempt_at: Millis,
        trace: TraceEntry,
        _keep_until: Millis,
    ) -> Result<(), StoreError> {
        let conv = key.to_string();
        let id = effect_id.to_string();
        let trace_json = encode(&trace)?;
        let updated = self
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE outbox SET attempts = ?3, next_attempt_at = ?4
                     WHERE conversation = ?1 AND effect_id = ?2",
                )
                .map_err(sql)?
                .execute(params![conv, id, attempts, next_attempt_at.0])
                .map_err(sql)
            })
            .await?;
        if updated > 0 {
            self.trace_line(key.to_string(), trace.at, trace_json);
        }
        Ok(())
    }

    async fn conversations_with_due_effects(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<ConversationKey>, StoreError> {
        let limit = limit_param(limit);
        self.read(move |c| {
            // Only the head counts: a later effect must not run before an earlier one.
            let mut stmt = c
                .prepare_cached(
                    "SELECT o.conversation FROM outbox o
                     JOIN (SELECT conversation, MIN(seq) AS seq FROM outbox GROUP BY conversation) h
                       ON o.conversation = h.conversation AND o.seq = h.seq
                     WHERE o.next_attempt_at <= ?1
                     ORDER BY o.next_attempt_at, o.seq
                     LIMIT ?2",
                )
                .map_err(sql)?;
            let rows = stmt.query_map(params![now.0, limit], |r| r.get::<_, String>(0)).map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(parse_key(&row.map_err(sql)?)?);
            }
            Ok(out)
        })
        .await
    }

    /// Upsert; a link that reuses either the desk conversation or the handoff id replaces it.
    async fn put_desk_link(&self, link: &DeskLink, _keep_until: Millis) -> Result<(), StoreError> {
        let link = link.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO desk_links(agent, desk_conversation_id, handoff_id, conversation)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(sql)?
            .execute(params![link.agent, link.desk_conversation_id, link.handoff_id, link.conversation.to_string()])
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn desk_link(&self, agent: &str, desk_conversation_id: &str) -> Result<Option<DeskLink>, StoreError> {
        let agent = agent.to_string();
        let desk_id = desk_conversation_id.to_string();
        self.lookup(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT agent, desk_conversation_id, handoff_id, conversation FROM desk_links
                     WHERE agent = ?1 AND desk_conversation_id = ?2",
                )
                .map_err(sql)?
                .query_row(params![agent, desk_id], link_row)
                .optional()
                .map_err(sql)?;
            row.map(|(a, d, h, k)| link_from_row(a, d, h, k)).transpose()
        })
        .await
    }

    async fn desk_link_for_handoff(&self, handoff_id: &str) -> Result<Option<DeskLink>, StoreError> {
        let handoff = handoff_id.to_string();
        self.lookup(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT agent, desk_conversation_id, handoff_id, conversation FROM desk_links
                     WHERE handoff_id = ?1",
                )
                .map_err(sql)?
                .query_row([&handoff], link_row)
                .optional()
                .map_err(sql)?;
            row.map(|(a, d, h, k)| link_from_row(a, d, h, k)).transpose()
        })
        .await
    }

    async fn set_desk_status(&self, agent: &str, status: &DeskStatusRecord) -> Result<(), StoreError> {
        let agent = agent.to_string();
        let json = encode(status)?;
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO desk_status(agent, json) VALUES (?1, ?2)
                 ON CONFLICT(agent) DO UPDATE SET json = excluded.json",
            )
            .map_err(sql)?
            .execute(params![agent, json])
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn desk_status(&self, agent: &str) -> Result<Option<DeskStatusRecord>, StoreError> {
        let agent = agent.to_string();
        self.lookup(move |c| {
            let json: Option<String> = c
                .prepare_cached("SELECT json FROM desk_status WHERE agent = ?1")
                .map_err(sql)?
                .query_row([&agent], |r| r.get(0))
                .optional()
                .map_err(sql)?;
            json.map(|j| decode(&format!("desk status {agent}"), &j)).transpose()
        })
        .await
    }

    async fn trace(&self, key: &ConversationKey) -> Result<Vec<TraceEntry>, StoreError> {
        let conv = key.to_string();
        let lines = self.inner.trace.lines(&conv).await?;
        lines.into_iter().map(|(seq, json)| decode(&format!("trace {conv}/{seq}"), &json)).collect()
    }

    async fn export_conversation(&self, key: &ConversationKey) -> Result<ConversationData, StoreError> {
        let session = self.load_session(key).await?.map(|v| v.session);
        let messages = self.logged_after(key, 0, usize::MAX).await?;
        let trace = self.trace(key).await?;
        let conv = key.to_string();
        let desk_links = self
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT agent, desk_conversation_id, handoff_id, conversation FROM desk_links
                         WHERE conversation = ?1",
                    )
                    .map_err(sql)?;
                let rows = stmt.query_map([&conv], link_row).map_err(sql)?;
                let mut out = Vec::new();
                for row in rows {
                    let (a, d, h, k) = row.map_err(sql)?;
                    out.push(link_from_row(a, d, h, k)?);
                }
                Ok(out)
            })
            .await?;
        Ok(ConversationData { conversation: key.to_string(), session, messages, trace, desk_links })
    }

    async fn erase_conversation(&self, key: &ConversationKey) -> Result<u64, StoreError> {
        let conv = key.to_string();
        let erased = conv.clone();
        let n = self
            .write(move |c| {
                let tx = c.savepoint().map_err(sql)?;
                let n = erase_in(&tx, &conv)?;
                tx.commit().map_err(sql)?;
                Ok(n)
            })
            .await?;
        // After the commit: lines still queued go too, so none outlives the erase.
        Ok(n + self.inner.trace.erase(vec![erased]).await?)
    }
}

/// Delete one conversation's records inside `tx`; returns how many rows went.
fn erase_in(tx: &Connection, conv: &str) -> Result<u64, StoreError> {
    let mut n = 0;
    // The local console is this hub's own desk: its copy of the handoffs goes too.
    for statement in [
        "DELETE FROM console_messages WHERE conversation_id IN
           (SELECT desk_conversation_id FROM desk_links WHERE conversation = ?1)",
        "DELETE FROM console_conversations WHERE id IN
           (SELECT desk_conversation_id FROM desk_links WHERE conversation = ?1)",
        "DELETE FROM sessions WHERE conversation = ?1",
        "DELETE FROM user_messages WHERE conversation = ?1",
        "DELETE FROM outbox WHERE conversation = ?1",
        "DELETE FROM queue WHERE conversation = ?1",
        "DELETE FROM timers WHERE conversation = ?1",
        "DELETE FROM desk_links WHERE conversation = ?1",
    ] {
        n += tx.prepare_cached(statement).map_err(sql)?.execute([conv]).map_err(sql)? as u64;
    }
    Ok(n)
}

impl Db {
    /// An agent's revision, and its JSON unless the revision is `known`.
    async fn agent_row(&self, id: &str, known: Option<i64>) -> Result<Option<(i64, Option<String>)>, StoreError> {
        let key = id.to_string();
        self.lookup(move |c| {
            c.prepare_cached("SELECT rev, CASE WHEN rev IS ?2 THEN NULL ELSE json END FROM agents WHERE id = ?1")
                .map_err(sql)?
                .query_row(params![key, known], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(sql)
        })
        .await
    }

    /// Delete the conversations whose retention ended before `now` and that have no event
    /// waiting, at most `limit` of them; returns how many went.
    pub async fn purge_expired(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let limit = limit_param(limit);
        let expired = self
            .write(move |c| {
                let tx = c.savepoint().map_err(sql)?;
                let expired: Vec<String> = {
                    let mut stmt = tx
                        // A conversation with an event waiting is not idle: its next step follows.
                        .prepare_cached(
                            "SELECT conversation FROM sessions WHERE keep_until < ?1
                         AND conversation NOT IN (SELECT conversation FROM queue) LIMIT ?2",
                        )
                        .map_err(sql)?;
                    let rows = stmt.query_map(params![now.0, limit], |r| r.get(0)).map_err(sql)?;
                    rows.collect::<Result<_, _>>().map_err(sql)?
                };
                for conv in &expired {
                    erase_in(&tx, conv)?;
                }
                tx.commit().map_err(sql)?;
                Ok(expired)
            })
            .await?;
        let n = expired.len();
        self.inner.trace.erase(expired).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    // The behaviour shared with the DynamoDB store is checked by the conformance suite
    // (shared/embedded/tests/conformance.rs); these are SQLite's own cases.
    use super::*;
    use crate::testutil::open_temp;

    #[tokio::test]
    async fn corrupt_json_is_reported_without_its_content() {
        let (_d, db) = open_temp();
        db.write(|c| {
            c.execute("INSERT INTO agents(id, json) VALUES ('demo', '{\"id\": 5, \"password\": \"hunter2\"}')", [])
                .map_err(sql)?;
            Ok(())
        })
        .await
        .unwrap();
        match db.get_agent("demo").await {
            Err(StoreError::Corrupt { key, message }) => {
                assert_eq!(key, "agent demo");
                assert!(!message.contains("hunter2"), "{message}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_agent_changed_by_another_connection_is_read_fresh() {
        let (_d, db) = open_temp();
        let agent = Agent {
            actions: Default::default(),
            api: None,
            id: "demo".into(),
            name: "first".into(),
            language: "en".into(),
            brain: Default::default(),
            desk: baton_core::agent::DeskConfig::None,
            policy: Default::default(),
            widget: Default::default(),
            messages: Default::default(),
            hours: None,
            fallback: baton_core::agent::FallbackConfig::None,
            channels: Default::default(),
            salesiq: None,
            intercom: None,
            livechat: None,
        };
        db.put_agent(&agent).await.unwrap();
        assert_eq!(db.get_agent("demo").await.unwrap().unwrap().name, "first");
        // `baton agents apply` from another process writes through a connection of its own.
        let other = Connection::open(db.path()).unwrap();
        let json = encode(&Agent { name: "second".into(), ..agent }).unwrap();
        other.execute("UPDATE agents SET json = ?1 WHERE id = 'demo'", [json]).unwrap();
        assert_eq!(db.get_agent("demo").await.unwrap().unwrap().name, "second");
        assert_eq!(db.get_agent("demo").await.unwrap().unwrap().name, "second");
        other.execute("DELETE FROM agents", []).unwrap();
        assert_eq!(db.get_agent("demo").await.unwrap(), None);
    }

    fn first_commit(k: &ConversationKey, event: &str) -> Commit {
        Commit {
            expected_version: 0,
            session: baton_core::session::Session::new(k.clone()),
            event_id: event.into(),
            effects: vec![PendingEffect::for_event(event, 0, baton_core::effect::Effect::CancelTimer)],
            trace: TraceEntry { at: Millis(5), what: "event".into(), id: event.into(), detail: String::new() },
            keep_until: Millis(i64::MAX),
        }
    }

    fn line(what: &str) -> TraceEntry {
        TraceEntry { at: Millis(6), what: what.into(), id: "x".into(), detail: String::new() }
    }

    /// Trace lines follow their write, so a write that did nothing leaves no line.
    #[tokio::test]
    async fn writes_that_change_nothing_leave_no_trace_line() {
        let (_d, db) = open_temp();
        let k = crate::testutil::key("u");
        assert!(matches!(db.commit(first_commit(&k, "e0")).await.unwrap(), CommitOutcome::Committed { .. }));
        assert_eq!(db.commit(first_commit(&k, "e0")).await.unwrap(), CommitOutcome::AlreadySeen);
        assert_eq!(db.commit(first_commit(&k, "e1")).await.unwrap(), CommitOutcome::VersionConflict);
        db.complete_effect(&k, "e0/0", line("done"), Millis(i64::MAX)).await.unwrap();
        db.complete_effect(&k, "e0/0", line("done again"), Millis(i64::MAX)).await.unwrap();
        db.defer_effect(&k, "e0/0", 1, Millis(9), line("deferred"), Millis(i64::MAX)).await.unwrap();
        let whats: Vec<String> = db.trace(&k).await.unwrap().into_iter().map(|t| t.what).collect();
        assert_eq!(whats, ["event", "done"]);
    }

    fn event_writes(event: &str) -> EventWrites {
        let Commit { event_id, effects, trace, .. } = first_commit(&crate::testutil::key("u"), event);
        EventWrites { event_id, effects, trace }
    }

    async fn queued(db: &Db) -> Vec<String> {
        db.read(|c| {
            let mut stmt = c.prepare("SELECT event_id FROM queue ORDER BY conversation, seq").map_err(sql)?;
            let ids = stmt.query_map([], |r| r.get(0)).map_err(sql)?.collect::<Result<Vec<String>, _>>();
            ids.map_err(sql)
        })
        .await
        .unwrap()
    }

    /// A conversation's backlog stepped together is one write: the session's version goes
    /// up by one, every event is marked seen and leaves the queue, every effect is added in
    /// order, and the whole batch is refused when one of its events was applied before.
    #[tokio::test]
    async fn a_batch_is_one_write_and_refused_as_a_whole() {
        use baton_core::ports::EventQueue;
        let (_d, db) = open_temp();
        let k = crate::testutil::key("u");
        let queue = crate::EmbeddedQueue::new(db.clone());
        let event = |id: &str| {
            let kind = baton_core::EventKind::UserMessage {
                text: id.into(),
                email: None,
                language: None,
                name: None,
                reply: None,
            };
            baton_core::Event::new(id, k.clone(), Millis(1), kind)
        };
        queue.enqueue(["a", "b", "c", "d"].map(event).to_vec()).await.unwrap();
        let batch = |expected_version, ids: &[&str]| BatchCommit {
            expected_version,
            session: baton_core::session::Session::new(k.clone()),
            events: ids.iter().map(|id| event_writes(id)).collect(),
            keep_until: Millis(i64::MAX),
        };

        let outcome = db.commit_batch_after(Vec::new(), batch(0, &["a", "b", "c"])).await.unwrap();
        assert_eq!(outcome, CommitOutcome::Committed { version: 1 });
        assert_eq!(db.load_session(&k).await.unwrap().unwrap().version, 1);
        for id in ["a", "b", "c"] {
            assert!(db.is_seen(&k, id).await.unwrap(), "{id} seen");
        }
        assert!(!db.is_seen(&k, "d").await.unwrap());
        assert_eq!(queued(&db).await, ["d"]);
        let pending: Vec<String> = db.pending_effects(&k).await.unwrap().into_iter().map(|i| i.effect.id).collect();
        assert_eq!(pending, ["a/0", "b/0", "c/0"]);

        // "c" was applied: a batch holding it writes nothing, though "d" was not.
        let done = vec![Completion { effect_id: "a/0".into(), trace: line("done"), keep_until: Millis(i64::MAX) }];
        assert_eq!(db.commit_batch_after(done, batch(1, &["d", "c"])).await.unwrap(), CommitOutcome::AlreadySeen);
        assert!(!db.is_seen(&k, "d").await.unwrap());
        assert_eq!(queued(&db).await, ["d"]);
        assert_eq!(db.load_session(&k).await.unwrap().unwrap().version, 1);
        // Its completions are written all the same.
        let pending: Vec<String> = db.pending_effects(&k).await.unwrap().into_iter().map(|i| i.effect.id).collect();
        assert_eq!(pending, ["b/0", "c/0"]);
        assert_eq!(db.commit_batch_after(Vec::new(), batch(0, &["d"])).await.unwrap(), CommitOutcome::VersionConflict);
        assert_eq!(
            db.commit_batch_after(Vec::new(), batch(1, &["d"])).await.unwrap(),
            CommitOutcome::Committed { version: 2 }
        );
        assert!(queued(&db).await.is_empty());
        let traced: Vec<String> = db.trace(&k).await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(traced, ["a", "b", "c", "x", "d"], "a line for each event committed, none for the refused");
    }

    /// A line still waiting for its batch goes with the erase, not written after it.
    #[tokio::test]
    async fn an_erase_leaves_no_waiting_line_behind() {
        let (_d, db) = open_temp();
        let k = crate::testutil::key("u");
        db.commit(first_commit(&k, "e0")).await.unwrap();
        // Erased while the commit's trace line is still queued.
        assert!(db.erase_conversation(&k).await.unwrap() > 0);
        tokio::time::sleep(crate::trace::BATCH_DELAY * 3).await;
        assert!(db.trace(&k).await.unwrap().is_empty());
    }

    /// Lines an earlier build wrote into the main file are read from the trace file after
    /// an upgrade, and the lines written since follow them.
    #[tokio::test]
    async fn trace_lines_of_an_earlier_build_are_kept() {
        let (dir, db) = open_temp();
        let path = dir.path().join("baton.db");
        let k = crate::testutil::key("u");
        let old = encode(&TraceEntry { at: Millis(1), what: "event".into(), id: "old".into(), detail: String::new() })
            .unwrap();
        let conv = k.to_string();
        db.write(move |c| {
            c.execute("INSERT INTO trace(conversation, at, json) VALUES (?1, 1, ?2)", params![conv, old]).map_err(sql)
        })
        .await
        .unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        db.commit(first_commit(&k, "e0")).await.unwrap();
        let ids: Vec<String> = db.trace(&k).await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["old", "e0"]);
        let left: i64 =
            db.read(|c| c.query_row("SELECT count(*) FROM trace", [], |r| r.get(0)).map_err(sql)).await.unwrap();
        assert_eq!(left, 0, "moved out of the main file");
    }

    /// Effects waiting in the outbox of an earlier layout (a rowid table and two indexes)
    /// keep their order after the upgrade, and effects committed since follow them.
    #[tokio::test]
    async fn outbox_rows_of_an_earlier_layout_keep_their_order() {
        let (dir, db) = open_temp();
        drop(db);
        let path = dir.path().join("baton.db");
        let k = crate::testutil::key("u");
        let other = crate::testutil::key("v");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE outbox;
                 CREATE TABLE outbox (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT, effect_id TEXT NOT NULL UNIQUE,
                     conversation TEXT NOT NULL, schema INTEGER NOT NULL, json TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL);
                 CREATE INDEX outbox_by_conversation ON outbox(conversation, seq);",
            )
            .unwrap();
            let mut insert = c
                .prepare(
                    "INSERT INTO outbox(seq, effect_id, conversation, schema, json, attempts, next_attempt_at)
                     VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6)",
                )
                .unwrap();
            for (seq, event, conv, attempts, due) in [(7, "a", &k, 0, 1), (8, "c", &other, 2, 3), (9, "b", &k, 0, 1)] {
                let effect =
                    encode(&PendingEffect::for_event(event, 0, baton_core::effect::Effect::CancelTimer)).unwrap();
                insert.execute(params![seq, format!("{event}/0"), conv.to_string(), effect, attempts, due]).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
        }
        let db = Db::open(&path).unwrap();
        let layout: String = db
            .read(|c| c.query_row("SELECT sql FROM sqlite_master WHERE name = 'outbox'", [], |r| r.get(0)).map_err(sql))
            .await
            .unwrap();
        assert!(layout.contains("WITHOUT ROWID"), "{layout}");
        let ids = |items: Vec<OutboxItem>| items.into_iter().map(|i| i.effect.id).collect::<Vec<_>>();
        assert_eq!(ids(db.pending_effects(&k).await.unwrap()), ["a/0", "b/0"]);
        let deferred = db.pending_effects(&other).await.unwrap();
        assert_eq!((deferred[0].attempts, deferred[0].next_attempt_at), (2, Millis(3)));
        assert!(matches!(db.commit(first_commit(&k, "e")).await.unwrap(), CommitOutcome::Committed { .. }));
        db.complete_effect(&k, "a/0", line("done"), Millis(i64::MAX)).await.unwrap();
        assert_eq!(ids(db.pending_effects(&k).await.unwrap()), ["b/0", "e/0"]);
        let mut due: Vec<String> =
            db.conversations_with_due_effects(Millis(10), 10).await.unwrap().iter().map(|c| c.to_string()).collect();
        due.sort();
        assert_eq!(due, [k.to_string(), other.to_string()]);
    }

    /// `put_agent` on another handle of the same file (as `baton agents apply` next to a
    /// running server) gives the row a new revision: the decoded copy is not served stale.
    #[tokio::test]
    async fn an_agent_applied_by_another_process_is_read_fresh() {
        let (dir, db) = open_temp();
        let mut agent: Agent = serde_json::from_value(serde_json::json!({"id": "demo", "name": "first"})).unwrap();
        db.put_agent(&agent).await.unwrap();
        assert_eq!(db.get_agent("demo").await.unwrap().unwrap().name, "first");
        let other = Db::open(&dir.path().join("baton.db")).unwrap();
        agent.name = "second".into();
        other.put_agent(&agent).await.unwrap();
        assert_eq!(db.get_agent("demo").await.unwrap().unwrap().name, "second");
    }
}
