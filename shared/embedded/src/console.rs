//! Storage of the operator console, the small help-desk that ships with `baton serve`.
//! The console is a separate desk app: it talks to the hub only over the webhook-desk
//! contract, so it keeps its own conversations, messages and API key here instead of
//! reading the hub's tables. Sharing the SQLite file is a deployment convenience only.

use crate::{limit_param, sql, Db};
use baton_core::model::{Millis, Secret};
use baton_core::ports::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::sync::Arc;

/// Roles of history lines sent on establish.
const HISTORY_ROLES: &[&str] = &["user", "bot"];
/// Roles of later messages: the user (relayed by the hub), the operator, or the console.
const MESSAGE_ROLES: &[&str] = &["user", "human", "system"];
const STATUSES: &[&str] = &["waiting", "active", "closed"];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleConversation {
    pub id: String,
    pub agent: String,
    pub email: String,
    /// `waiting`, `active` or `closed`.
    pub status: String,
    pub operator: Option<String>,
    pub reason: String,
    /// What the hub sent about the user on establish (JSON; a string if it was not JSON).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub user_info: serde_json::Value,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Text of the latest message, if any.
    pub last_text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsoleMessage {
    /// `user`, `bot`, `human` or `system`.
    pub role: String,
    pub text: String,
    pub at: Millis,
}

#[derive(Clone, Debug)]
pub struct ConsoleStore {
    db: Arc<Db>,
}

fn check(what: &str, value: &str, allowed: &[&str]) -> Result<(), StoreError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!("invalid {what} {value:?}; expected one of {allowed:?}")))
    }
}

const CONVERSATION_COLUMNS: &str = "c.id, c.agent, c.email, c.status, c.operator, c.reason, c.user_info,
    c.created_at, c.updated_at,
    (SELECT m.text FROM console_messages m WHERE m.conversation_id = c.id ORDER BY m.seq DESC LIMIT 1)";

fn conversation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConsoleConversation> {
    let user_info: String = r.get(6)?;
    Ok(ConsoleConversation {
        id: r.get(0)?,
        agent: r.get(1)?,
        email: r.get(2)?,
        status: r.get(3)?,
        operator: r.get(4)?,
        reason: r.get(5)?,
        user_info: serde_json::from_str(&user_info).unwrap_or(serde_json::Value::String(user_info)),
        created_at: Millis(r.get(7)?),
        updated_at: Millis(r.get(8)?),
        last_text: r.get(9)?,
    })
}

fn insert_message(
    c: &Connection,
    id: &str,
    dedupe: &str,
    role: &str,
    text: &str,
    at: Millis,
) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached(
            "INSERT OR IGNORE INTO console_messages(conversation_id, dedupe_key, role, text, at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(sql)?
        .execute(params![id, dedupe, role, text, at.0])
        .map_err(sql)?;
    Ok(n > 0)
}

impl ConsoleStore {
    pub fn new(db: Arc<Db>) -> ConsoleStore {
        ConsoleStore { db }
    }

    /// Create a waiting conversation with its history. Idempotent on `id`: a repeated
    /// establish changes nothing and returns false.
    #[allow(clippy::too_many_arguments)]
    pub async fn open_conversation(
        &self,
        id: &str,
        agent: &str,
        email: &str,
        user_info_json: &str,
        reason: &str,
        history: Vec<(String, String, Millis)>,
        at: Millis,
    ) -> Result<bool, StoreError> {
        for (role, _, _) in &history {
            check("history role", role, HISTORY_ROLES)?;
        }
        let (id, agent, email, info, reason) =
            (id.to_string(), agent.to_string(), email.to_string(), user_info_json.to_string(), reason.to_string());
        self.db
            .write(move |c| {
                let tx = c.savepoint().map_err(sql)?;
                let created = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO console_conversations
                           (id, agent, email, user_info, reason, status, operator, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'waiting', NULL, ?6, ?6)",
                    )
                    .map_err(sql)?
                    .execute(params![id, agent, email, info, reason, at.0])
                    .map_err(sql)?
                    > 0;
                if created {
                    for (i, (role, text, when)) in history.iter().enumerate() {
                        insert_message(&tx, &id, &format!("{id}/history/{i}"), role, text, *when)?;
                    }
                }
                tx.commit().map_err(sql)?;
                Ok(created)
            })
            .await
    }

    /// Add a message unless `dedupe_key` was added before. False for a duplicate or an
    /// unknown conversation (check with `get` to tell them apart).
    pub async fn add_message(
        &self,
        conversation_id: &str,
        dedupe_key: &str,
        role: &str,
        text: &str,
        at: Millis,
    ) -> Result<bool, StoreError> {
        check("message role", role, MESSAGE_ROLES)?;
        let (id, dedupe, role, text) =
            (conversation_id.to_string(), dedupe_key.to_string(), role.to_string(), text.to_string());
        self.db
            .write(move |c| {
                let tx = c.savepoint().map_err(sql)?;
                let touched = tx
                    .prepare_cached("UPDATE console_conversations SET updated_at = MAX(updated_at, ?2) WHERE id = ?1")
                    .map_err(sql)?
                    .execute(params![id, at.0])
                    .map_err(sql)?;
                if touched == 0 || !insert_message(&tx, &id, &dedupe, &role, &text, at)? {
                    return Ok(false); // rollback the touch
                }
                tx.commit().map_err(sql)?;
                Ok(true)
            })
            .await
    }

    /// Set the status; `operator` replaces the assigned operator when given and is kept
    /// otherwise. False when the conversation does not exist.
    pub async fn set_status(&self, id: &str, status: &str, operator: Option<&str>) -> Result<bool, StoreError> {
        check("status", status, STATUSES)?;
        let (id, status, operator) = (id.to_string(), status.to_string(), operator.map(str::to_string));
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE console_conversations SET status = ?2, operator = COALESCE(?3, operator) WHERE id = ?1",
                    )
                    .map_err(sql)?
                    .execute(params![id, status, operator])
                    .map_err(sql)?;
                Ok(n > 0)
            })
            .await
    }

    /// Conversations, the most recently active first.
    pub async fn list(&self, limit: usize) -> Result<Vec<ConsoleConversation>, StoreError> {
        let limit = limit_param(limit);
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {CONVERSATION_COLUMNS} FROM console_conversations c
                         ORDER BY c.updated_at DESC, c.created_at DESC, c.id LIMIT ?1"
                    ))
                    .map_err(sql)?;
                let rows = stmt.query_map([limit], conversation_row).map_err(sql)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sql)
            })
            .await
    }

    /// One conversation with all its messages, oldest first.
    pub async fn get(&self, id: &str) -> Result<Option<(ConsoleConversation, Vec<ConsoleMessage>)>, StoreError> {
        let id = id.to_string();
        self.db
            .read(move |c| {
                let conv = c
                    .prepare_cached(&format!(
                        "SELECT {CONVERSATION_COLUMNS} FROM console_conversations c WHERE c.id = ?1"
                    ))
                    .map_err(sql)?
                    .query_row([&id], conversation_row)
                    .optional()
                    .map_err(sql)?;
                let Some(conv) = conv else {
                    return Ok(None);
                };
                let mut stmt = c
                    .prepare_cached(
                        "SELECT role, text, at FROM console_messages WHERE conversation_id = ?1 ORDER BY seq",
                    )
                    .map_err(sql)?;
                let rows = stmt
                    .query_map([&id], |r| {
                        Ok(ConsoleMessage { role: r.get(0)?, text: r.get(1)?, at: Millis(r.get(2)?) })
                    })
                    .map_err(sql)?;
                let messages = rows.collect::<Result<Vec<_>, _>>().map_err(sql)?;
                Ok(Some((conv, messages)))
            })
            .await
    }

    /// The console's API key for calling the hub as `agent`.
    pub async fn credential(&self, agent: &str) -> Result<Option<Secret>, StoreError> {
        let agent = agent.to_string();
        self.db
            .lookup(move |c| {
                let token: Option<String> = c
                    .prepare_cached("SELECT token FROM console_credentials WHERE agent = ?1")
                    .map_err(sql)?
                    .query_row([&agent], |r| r.get(0))
                    .optional()
                    .map_err(sql)?;
                Ok(token.map(Secret))
            })
            .await
    }

    pub async fn set_credential(&self, agent: &str, token: &str) -> Result<(), StoreError> {
        let (agent, token) = (agent.to_string(), token.to_string());
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO console_credentials(agent, token) VALUES (?1, ?2)
                     ON CONFLICT(agent) DO UPDATE SET token = excluded.token",
                )
                .map_err(sql)?
                .execute(params![agent, token])
                .map_err(sql)?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::open_temp;

    fn hist() -> Vec<(String, String, Millis)> {
        vec![("user".into(), "hi".into(), Millis(1)), ("bot".into(), "hello".into(), Millis(2))]
    }

    #[tokio::test]
    async fn console_conversations_and_messages() {
        let (_d, db) = open_temp();
        let s = ConsoleStore::new(db);
        assert!(s
            .open_conversation("c1", "demo", "a@b.c", r#"{"name":"Ann"}"#, "asked", hist(), Millis(10))
            .await
            .unwrap());
        // A repeated establish creates nothing and keeps the first history.
        assert!(!s.open_conversation("c1", "demo", "x@y.z", "{}", "again", hist(), Millis(11)).await.unwrap());
        assert!(s.open_conversation("c2", "demo", "d@e.f", "not json", "rule", vec![], Millis(20)).await.unwrap());
        assert!(s
            .open_conversation(
                "c3",
                "demo",
                "d@e.f",
                "{}",
                "r",
                vec![("human".into(), "x".into(), Millis(1))],
                Millis(20)
            )
            .await
            .is_err());

        assert!(s.add_message("c1", "m1", "user", "are you there?", Millis(30)).await.unwrap());
        assert!(!s.add_message("c1", "m1", "user", "are you there?", Millis(31)).await.unwrap());
        assert!(s.add_message("c1", "m2", "human", "yes", Millis(32)).await.unwrap());
        assert!(!s.add_message("nope", "m3", "human", "lost", Millis(33)).await.unwrap());
        assert!(s.add_message("c1", "m4", "operator", "bad role", Millis(34)).await.is_err());

        assert!(s.set_status("c1", "active", Some("olga")).await.unwrap());
        assert!(s.set_status("c1", "closed", None).await.unwrap());
        assert!(!s.set_status("nope", "active", None).await.unwrap());
        assert!(s.set_status("c1", "done", None).await.is_err());

        let list = s.list(10).await.unwrap();
        let ids: Vec<_> = list.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2"]); // c1 had activity at 32
        assert_eq!(list[0].last_text.as_deref(), Some("yes"));
        assert_eq!(list[0].status, "closed");
        assert_eq!(list[0].operator.as_deref(), Some("olga"));
        assert_eq!(list[0].email, "a@b.c");
        assert_eq!(list[0].reason, "asked");
        assert_eq!((list[0].created_at, list[0].updated_at), (Millis(10), Millis(32)));
        assert_eq!(list[0].user_info["name"], "Ann");
        assert_eq!(list[1].last_text, None);
        assert_eq!(list[1].user_info, serde_json::Value::String("not json".into()));
        assert_eq!(s.list(1).await.unwrap().len(), 1);

        let (conv, msgs) = s.get("c1").await.unwrap().unwrap();
        assert_eq!(conv.id, "c1");
        let lines: Vec<_> = msgs.iter().map(|m| (m.role.as_str(), m.text.as_str(), m.at.0)).collect();
        assert_eq!(
            lines,
            [("user", "hi", 1), ("bot", "hello", 2), ("user", "are you there?", 30), ("human", "yes", 32)]
        );
        assert_eq!(s.get("nope").await.unwrap(), None);
        let json = serde_json::to_value(&conv).unwrap();
        assert_eq!(json["last_text"], "yes");
        assert_eq!(json["updated_at"], 32);

        assert_eq!(s.credential("demo").await.unwrap(), None);
        s.set_credential("demo", "tok1").await.unwrap();
        s.set_credential("demo", "tok2").await.unwrap();
        assert_eq!(s.credential("demo").await.unwrap().unwrap().expose(), "tok2");
    }
}
