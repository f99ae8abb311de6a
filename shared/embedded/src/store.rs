//! `Store` on SQLite. `commit` is the transactional outbox: session, seen id, effects and
//! trace line are written in one transaction guarded by the session's version.

use crate::{decode, encode, limit_param, parse_key, sql, to_i64, Db};
use async_trait::async_trait;
use baton_core::agent::Agent;
use baton_core::effect::{PendingEffect, EFFECT_SCHEMA};
use baton_core::model::{ConversationKey, Millis};
use baton_core::ports::{
    Commit, CommitOutcome, DeskLink, DeskStatusRecord, OutboxItem, Store, StoreError, TraceEntry, VersionedSession,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

fn append_trace(c: &Connection, conversation: &str, entry_at: Millis, json: &str) -> Result<(), StoreError> {
    c.prepare_cached("INSERT INTO trace(conversation, at, json) VALUES (?1, ?2, ?3)")
        .map_err(sql)?
        .execute(params![conversation, entry_at.0, json])
        .map_err(sql)?;
    Ok(())
}

fn link_from_row(agent: String, desk_id: String, handoff: String, conv: String) -> Result<DeskLink, StoreError> {
    Ok(DeskLink { agent, desk_conversation_id: desk_id, handoff_id: handoff, conversation: parse_key(&conv)? })
}

type LinkRow = (String, String, String, String);

fn link_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LinkRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

#[async_trait]
impl Store for Db {
    async fn get_agent(&self, id: &str) -> Result<Option<Agent>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            let json: Option<String> = c
                .prepare_cached("SELECT json FROM agents WHERE id = ?1")
                .map_err(sql)?
                .query_row([&id], |r| r.get(0))
                .optional()
                .map_err(sql)?;
            json.map(|j| decode(&format!("agent {id}"), &j)).transpose()
        })
        .await
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
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT hash FROM tokens WHERE agent = ?1 ORDER BY created_at, rowid").map_err(sql)?;
            let rows = stmt.query_map([&agent], |r| r.get(0)).map_err(sql)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(sql)
        })
        .await
    }

    async fn load_session(&self, key: &ConversationKey) -> Result<Option<VersionedSession>, StoreError> {
        let conv = key.to_string();
        self.read(move |c| {
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

    async fn is_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        let id = event_id.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT EXISTS(SELECT 1 FROM seen WHERE event_id = ?1)")
                .map_err(sql)?
                .query_row([&id], |r| r.get(0))
                .map_err(sql)
        })
        .await
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let conv = commit.session.key.to_string();
        let session_json = encode(&commit.session)?;
        let updated_at = commit.session.updated_at.0;
        let effects =
            commit.effects.iter().map(|e| Ok((e.id.clone(), encode(e)?))).collect::<Result<Vec<_>, StoreError>>()?;
        let trace_json = encode(&commit.trace)?;
        let at = commit.trace.at;
        let event_id = commit.event_id;
        let expected = commit.expected_version;
        let new_version =
            expected.checked_add(1).ok_or_else(|| StoreError::Unavailable("session version overflow".into()))?;
        let new_version_i64 = to_i64(new_version, "session version")?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            let seen: bool = tx
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM seen WHERE event_id = ?1)")
                .map_err(sql)?
                .query_row([&event_id], |r| r.get(0))
                .map_err(sql)?;
            if seen {
                return Ok(CommitOutcome::AlreadySeen);
            }
            let current: Option<i64> = tx
                .prepare_cached("SELECT version FROM sessions WHERE conversation = ?1")
                .map_err(sql)?
                .query_row([&conv], |r| r.get(0))
                .optional()
                .map_err(sql)?;
            if u64::try_from(current.unwrap_or(0)).ok() != Some(expected) {
                return Ok(CommitOutcome::VersionConflict);
            }
            tx.prepare_cached(
                "INSERT INTO sessions(conversation, version, json, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(conversation) DO UPDATE SET
                   version = excluded.version, json = excluded.json, updated_at = excluded.updated_at",
            )
            .map_err(sql)?
            .execute(params![conv, new_version_i64, session_json, updated_at])
            .map_err(sql)?;
            tx.prepare_cached("INSERT INTO seen(event_id, conversation, at) VALUES (?1, ?2, ?3)")
                .map_err(sql)?
                .execute(params![event_id, conv, at.0])
                .map_err(sql)?;
            {
                // A new effect is due at once: its first attempt follows the commit.
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO outbox(effect_id, conversation, schema, json, attempts, next_attempt_at)
                         VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                    )
                    .map_err(sql)?;
                for (id, json) in &effects {
                    insert.execute(params![id, conv, EFFECT_SCHEMA, json, at.0]).map_err(sql)?;
                }
            }
            append_trace(&tx, &conv, at, &trace_json)?;
            tx.commit().map_err(sql)?;
            Ok(CommitOutcome::Committed { version: new_version })
        })
        .await
    }

    async fn pending_effects(&self, key: &ConversationKey) -> Result<Vec<OutboxItem>, StoreError> {
        let conv = key.to_string();
        self.read(move |c| {
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
    ) -> Result<(), StoreError> {
        let conv = key.to_string();
        let id = effect_id.to_string();
        let trace_json = encode(&trace)?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            let n = tx
                .prepare_cached("DELETE FROM outbox WHERE conversation = ?1 AND effect_id = ?2")
                .map_err(sql)?
                .execute(params![conv, id])
                .map_err(sql)?;
            if n > 0 {
                append_trace(&tx, &conv, trace.at, &trace_json)?;
            }
            tx.commit().map_err(sql)
        })
        .await
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
    ) -> Result<(), StoreError> {
        let conv = key.to_string();
        let id = effect_id.to_string();
        let trace_json = encode(&trace)?;
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            let n = tx
                .prepare_cached(
                    "UPDATE outbox SET attempts = ?3, next_attempt_at = ?4
                     WHERE conversation = ?1 AND effect_id = ?2",
                )
                .map_err(sql)?
                .execute(params![conv, id, attempts, next_attempt_at.0])
                .map_err(sql)?;
            if n > 0 {
                append_trace(&tx, &conv, trace.at, &trace_json)?;
            }
            tx.commit().map_err(sql)
        })
        .await
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
                       ON o.seq = h.seq
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
    async fn put_desk_link(&self, link: &DeskLink) -> Result<(), StoreError> {
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
        self.read(move |c| {
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
        self.read(move |c| {
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
        self.read(move |c| {
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
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT seq, json FROM trace WHERE conversation = ?1 ORDER BY seq").map_err(sql)?;
            let rows = stmt.query_map([&conv], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))).map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, json) = row.map_err(sql)?;
                out.push(decode(&format!("trace {conv}/{seq}"), &json)?);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{key, open_temp};
    use baton_core::effect::Effect;
    use baton_core::model::{Channel, OutMessage, Role, ServiceStatus};
    use baton_core::session::Session;

    fn trace(at: i64, id: &str) -> TraceEntry {
        TraceEntry { at: Millis(at), what: "event".into(), id: id.into(), detail: format!("detail of {id}") }
    }

    fn send(text: &str) -> Effect {
        Effect::SendToUser { message: OutMessage::new(Role::Bot, text) }
    }

    fn commit_of(k: &ConversationKey, expected: u64, event: &str, texts: &[&str]) -> Commit {
        let mut session = Session::new(k.clone());
        session.updated_at = Millis(1000 + expected as i64);
        session.unanswered = expected as u32;
        Commit {
            expected_version: expected,
            session,
            event_id: event.into(),
            effects: texts.iter().enumerate().map(|(i, t)| PendingEffect::for_event(event, i, send(t))).collect(),
            trace: trace(1000, event),
        }
    }

    fn texts(items: &[OutboxItem]) -> Vec<String> {
        items
            .iter()
            .map(|i| match &i.effect.effect {
                Effect::SendToUser { message } => message.text.clone(),
                other => other.name().to_string(),
            })
            .collect()
    }

    #[tokio::test]
    async fn commit_versions_conflicts_and_seen() {
        let (_d, db) = open_temp();
        let k = key("u1");
        assert_eq!(db.load_session(&k).await.unwrap(), None);
        assert_eq!(db.commit(commit_of(&k, 0, "e1", &["a"])).await.unwrap(), CommitOutcome::Committed { version: 1 });
        let loaded = db.load_session(&k).await.unwrap().unwrap();
        assert_eq!(loaded.version, 1);
        assert_eq!(loaded.session.updated_at, Millis(1000));
        assert!(db.is_seen("e1").await.unwrap());
        assert!(!db.is_seen("e2").await.unwrap());

        // Stale version: a row exists, so expecting 0 (or 5) conflicts.
        assert_eq!(db.commit(commit_of(&k, 0, "e2", &["b"])).await.unwrap(), CommitOutcome::VersionConflict);
        assert_eq!(db.commit(commit_of(&k, 5, "e2", &["b"])).await.unwrap(), CommitOutcome::VersionConflict);
        // The seen check comes first, even with a wrong version.
        assert_eq!(db.commit(commit_of(&k, 7, "e1", &["c"])).await.unwrap(), CommitOutcome::AlreadySeen);
        assert_eq!(db.commit(commit_of(&k, 1, "e2", &["b"])).await.unwrap(), CommitOutcome::Committed { version: 2 });
        let loaded = db.load_session(&k).await.unwrap().unwrap();
        assert_eq!((loaded.version, loaded.session.unanswered), (2, 1));
        // Only the two committed events left effects and trace lines.
        assert_eq!(texts(&db.pending_effects(&k).await.unwrap()), ["a", "b"]);
        let ids: Vec<_> = db.trace(&k).await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["e1", "e2"]);
    }

    #[tokio::test]
    async fn failed_commit_leaves_nothing_behind() {
        let (_d, db) = open_temp();
        let k = key("u1");
        // Two effects with the same id: the second insert fails inside the transaction.
        let mut c = commit_of(&k, 0, "e1", &["a", "b"]);
        c.effects[1].id = c.effects[0].id.clone();
        assert!(matches!(db.commit(c).await, Err(StoreError::Unavailable(_))));
        assert_eq!(db.load_session(&k).await.unwrap(), None);
        assert!(!db.is_seen("e1").await.unwrap());
        assert!(db.pending_effects(&k).await.unwrap().is_empty());
        assert!(db.trace(&k).await.unwrap().is_empty());
        // The same event then commits cleanly.
        assert_eq!(
            db.commit(commit_of(&k, 0, "e1", &["a", "b"])).await.unwrap(),
            CommitOutcome::Committed { version: 1 }
        );
        assert_eq!(texts(&db.pending_effects(&k).await.unwrap()), ["a", "b"]);
    }

    #[tokio::test]
    async fn outbox_order_complete_defer_and_due() {
        let (_d, db) = open_temp();
        let k1 = key("u1");
        let k2 = key("u2");
        let k3 = key("u3");
        db.commit(commit_of(&k1, 0, "a", &["1", "2", "3"])).await.unwrap();
        db.commit(commit_of(&k2, 0, "b", &["x"])).await.unwrap();
        db.commit(commit_of(&k1, 1, "c", &["4"])).await.unwrap();
        let items = db.pending_effects(&k1).await.unwrap();
        assert_eq!(texts(&items), ["1", "2", "3", "4"]);
        assert_eq!(items[0].attempts, 0);
        assert_eq!(items[0].next_attempt_at, Millis(1000));

        db.complete_effect(&k1, "a/0", trace(2000, "a/0")).await.unwrap();
        assert_eq!(texts(&db.pending_effects(&k1).await.unwrap()), ["2", "3", "4"]);
        // Completing again (or with the wrong conversation) writes nothing.
        db.complete_effect(&k1, "a/0", trace(2001, "again")).await.unwrap();
        db.complete_effect(&k2, "a/1", trace(2001, "wrong")).await.unwrap();
        assert_eq!(db.pending_effects(&k1).await.unwrap().len(), 3);
        let ids: Vec<_> = db.trace(&k1).await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["a", "c", "a/0"]);

        // Defer k1's head to 5000: k1 is not due before then, k2 is.
        db.defer_effect(&k1, "a/1", 1, Millis(5000), trace(2002, "a/1")).await.unwrap();
        let items = db.pending_effects(&k1).await.unwrap();
        assert_eq!((items[0].attempts, items[0].next_attempt_at), (1, Millis(5000)));
        assert_eq!(db.trace(&k1).await.unwrap().last().unwrap().id, "a/1");
        assert_eq!(db.conversations_with_due_effects(Millis(3000), 10).await.unwrap(), vec![k2.clone()]);
        // Deferring a later effect of k2 does not matter: only the head counts.
        db.commit(commit_of(&k2, 1, "d", &["y"])).await.unwrap();
        db.defer_effect(&k2, "d/0", 1, Millis(9000), trace(1, "d/0")).await.unwrap();
        assert_eq!(db.conversations_with_due_effects(Millis(3000), 10).await.unwrap(), vec![k2.clone()]);
        let mut due = db.conversations_with_due_effects(Millis(5000), 10).await.unwrap();
        due.sort();
        assert_eq!(due, [k1.clone(), k2.clone()]);
        assert_eq!(db.conversations_with_due_effects(Millis(5000), 1).await.unwrap().len(), 1);
        // A conversation with an empty outbox is never due.
        assert!(!db.conversations_with_due_effects(Millis(i64::MAX), 10).await.unwrap().contains(&k3));
    }

    #[tokio::test]
    async fn agents_tokens_links_status() {
        let (_d, db) = open_temp();
        let a: Agent = serde_json::from_str(r#"{"id":"demo","name":"Demo"}"#).unwrap();
        let b: Agent = serde_json::from_str(r#"{"id":"alpha"}"#).unwrap();
        db.put_agent(&a).await.unwrap();
        db.put_agent(&b).await.unwrap();
        let mut a2 = a.clone();
        a2.name = "Renamed".into();
        db.put_agent(&a2).await.unwrap();
        assert_eq!(db.get_agent("demo").await.unwrap(), Some(a2.clone()));
        assert_eq!(db.get_agent("none").await.unwrap(), None);
        let ids: Vec<_> = db.list_agents().await.unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["alpha", "demo"]);

        db.add_token("demo", "h1", Millis(1)).await.unwrap();
        db.add_token("demo", "h2", Millis(2)).await.unwrap();
        db.add_token("demo", "h3", Millis(3)).await.unwrap();
        db.add_token("demo", "h1", Millis(4)).await.unwrap(); // idempotent
        db.add_token("alpha", "hb", Millis(1)).await.unwrap();
        assert!(db.add_token("alpha", "h2", Millis(5)).await.is_err());
        assert_eq!(db.token_hashes("demo").await.unwrap(), ["h1", "h2", "h3"]);
        assert_eq!(db.revoke_tokens("demo", Some("h2")).await.unwrap(), 2);
        assert_eq!(db.token_hashes("demo").await.unwrap(), ["h2"]);
        assert_eq!(db.token_hashes("alpha").await.unwrap(), ["hb"]);
        assert_eq!(db.revoke_tokens("alpha", None).await.unwrap(), 1);
        assert!(db.token_hashes("alpha").await.unwrap().is_empty());

        let k = ConversationKey::new("demo", Channel::Telegram, "42").unwrap();
        let link = DeskLink {
            agent: "demo".into(),
            desk_conversation_id: "desk-1".into(),
            handoff_id: "h-1".into(),
            conversation: k.clone(),
        };
        db.put_desk_link(&link).await.unwrap();
        assert_eq!(db.desk_link("demo", "desk-1").await.unwrap(), Some(link.clone()));
        assert_eq!(db.desk_link("other", "desk-1").await.unwrap(), None);
        assert_eq!(db.desk_link_for_handoff("h-1").await.unwrap(), Some(link.clone()));
        assert_eq!(db.desk_link_for_handoff("h-2").await.unwrap(), None);

        assert_eq!(db.desk_status("demo").await.unwrap(), None);
        let st = DeskStatusRecord { status: ServiceStatus::Available, detail: "ok".into(), checked_at: Millis(9) };
        db.set_desk_status("demo", &st).await.unwrap();
        let st2 = DeskStatusRecord { status: ServiceStatus::Unavailable, ..st };
        db.set_desk_status("demo", &st2).await.unwrap();
        assert_eq!(db.desk_status("demo").await.unwrap(), Some(st2));
    }

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
}
