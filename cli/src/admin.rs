//! Agent administration and tracing on either store (the embedded SQLite file, or the AWS
//! deployment's DynamoDB table): `baton agents ...`, `baton trace`; and `baton redrive` for
//! the AWS deployment's dead-letter queues.

use crate::config;
use baton_core::ports::Store;
use baton_core::{ConversationKey, Millis};
use baton_runtime::auth::{generate_token, hash_token};
use std::io::Write;
use std::path::Path;

fn now() -> Millis {
    use baton_core::ports::Clock;
    baton_runtime::clock::SystemClock.now()
}

/// Where agents and conversations are stored.
pub enum StoreKind {
    Sqlite,
    /// The table holds secret references only (`ssm:/...`), never values.
    Dynamo,
}

/// Validate and store every agent of `file`. New agents get a token, printed once. The
/// DynamoDB store serves a cloud deployment: endpoints on private addresses are refused there
/// unless `allow_private_targets`.
pub async fn apply(
    db: &dyn Store,
    kind: StoreKind,
    file: &Path,
    allow_private_targets: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut agents = config::load_file(file)?;
    if let StoreKind::Dynamo = kind {
        if !allow_private_targets {
            config::refuse_private_targets(&agents)?;
        }
        for agent in &mut agents {
            for (field, secret) in agent.secrets_mut() {
                if !baton_core::agent::is_ssm_reference(secret) {
                    anyhow::bail!(
                        "agent {}: {field} must be an SSM Parameter Store reference (ssm:/baton/...) \
                         for the DynamoDB store: the table never holds secret values",
                        agent.id
                    );
                }
            }
        }
    }
    for agent in &agents {
        let existed = db.get_agent(&agent.id).await?.is_some();
        db.put_agent(agent).await?;
        if db.token_hashes(&agent.id).await?.is_empty() {
            let token = generate_token();
            db.add_token(&agent.id, &hash_token(&token), now()).await?;
            writeln!(
                out,
                "{} agent {}; its access token (shown once): {token}",
                if existed { "updated" } else { "created" },
                agent.id
            )?;
        } else {
            writeln!(out, "{} agent {}", if existed { "updated" } else { "created" }, agent.id)?;
        }
    }
    Ok(())
}

pub async fn list(db: &dyn Store, out: &mut dyn Write) -> anyhow::Result<()> {
    let agents = db.list_agents().await?;
    if agents.is_empty() {
        writeln!(out, "no agents; create some with `baton agents apply FILE`")?;
    }
    for a in agents {
        let tokens = db.token_hashes(&a.id).await?.len();
        let status =
            db.desk_status(&a.id).await?.map(|s| format!("{:?}", s.status)).unwrap_or_else(|| "unchecked".into());
        let desk = match &a.desk {
            baton_core::agent::DeskConfig::None => "none".to_string(),
            baton_core::agent::DeskConfig::Webhook { url, .. } => format!("webhook {url}"),
            baton_core::agent::DeskConfig::Salesiq { department_id, .. } => {
                format!("salesiq department {department_id}")
            }
            baton_core::agent::DeskConfig::Intercom { team_id, admin_id } => match (team_id, admin_id) {
                (_, Some(admin)) => format!("intercom admin {admin}"),
                (Some(team), None) => format!("intercom team {team}"),
                (None, None) => "intercom (unassigned)".into(),
            },
            baton_core::agent::DeskConfig::Livechat { group_id } => format!("livechat group {group_id}"),
        };
        writeln!(out, "{}\t{}\tdesk: {desk} ({status})\ttokens: {tokens}", a.id, a.name)?;
    }
    Ok(())
}

/// A new token for `agent`; the others are revoked unless `keep_old` (rotation without
/// downtime: deploy the new token, then rotate again without `keep_old`... or revoke).
pub async fn rotate_token(db: &dyn Store, agent: &str, keep_old: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if db.get_agent(agent).await?.is_none() {
        anyhow::bail!("no agent {agent:?}");
    }
    let token = generate_token();
    let hash = hash_token(&token);
    db.add_token(agent, &hash, now()).await?;
    let revoked = if keep_old { 0 } else { db.revoke_tokens(agent, Some(&hash)).await? };
    writeln!(out, "new access token for {agent} (shown once): {token}")?;
    writeln!(out, "{revoked} older token(s) revoked")?;
    Ok(())
}

pub async fn trace(db: &dyn Store, conversation: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let key = ConversationKey::parse(conversation).map_err(|e| anyhow::anyhow!("{conversation:?}: {e}"))?;
    let entries = db.trace(&key).await?;
    if entries.is_empty() {
        writeln!(out, "nothing recorded for {key}")?;
    }
    for e in entries {
        writeln!(out, "{}\t{}\t{}\t{}", e.at.0, e.what, e.id, e.detail)?;
    }
    Ok(())
}

/// `baton users export`: everything kept about one conversation, as JSON.
pub async fn export_user(db: &dyn Store, conversation: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let key = ConversationKey::parse(conversation).map_err(|e| anyhow::anyhow!("{conversation:?}: {e}"))?;
    let data = db.export_conversation(&key).await?;
    serde_json::to_writer_pretty(&mut *out, &data)?;
    writeln!(out)?;
    Ok(())
}

/// `baton users erase`: delete everything kept about one conversation.
pub async fn erase_user(db: &dyn Store, conversation: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let key = ConversationKey::parse(conversation).map_err(|e| anyhow::anyhow!("{conversation:?}: {e}"))?;
    let n = db.erase_conversation(&key).await?;
    writeln!(out, "erased {key}: {n} record(s) deleted")?;
    Ok(())
}

/// `baton redrive`: move up to `max` messages (all by default) from the dead-letter queue
/// `from` to the queue `to`, with the SQS client of the environment (see
/// [`baton_aws::redrive`]).
pub async fn redrive(from: &str, to: &str, max: Option<usize>, out: &mut dyn Write) -> anyhow::Result<()> {
    let (_, sqs) = baton_aws::clients_from_env().await;
    let moved = baton_aws::redrive(&sqs, from, to, max.unwrap_or(usize::MAX)).await?;
    writeln!(out, "moved {moved} message(s) from {from} to {to}")?;
    Ok(())
}

/// `baton channels telegram set-webhook|delete-webhook`: register (or remove) the hub's
/// webhook with the Bot API. `url` may be the deployment's base URL; the agent's path
/// (`/channels/telegram/{agent}`) is appended when missing. `agent` must have its secrets
/// resolved.
pub async fn telegram_webhook(agent: &baton_core::Agent, url: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(cfg) = agent.channels.telegram.as_ref() else {
        anyhow::bail!("agent {} has no [channels.telegram] section", agent.id);
    };
    let timeout = std::time::Duration::from_secs(15);
    let client = baton_connectors::telegram::TelegramClient::from_client(
        baton_connectors::outbound::http_client(timeout, baton_connectors::outbound::Targets::Any),
        timeout,
    );
    match url {
        Some(url) => {
            let path = format!("/channels/telegram/{}", agent.id);
            let url = url.trim_end_matches('/');
            let full = if url.ends_with(&path) { url.to_string() } else { format!("{url}{path}") };
            if !full.starts_with("https://") {
                anyhow::bail!("Telegram only calls https:// webhooks (ports 443, 80, 88 or 8443); got {full}");
            }
            client.set_webhook(cfg, &full).await?;
            writeln!(out, "Telegram will post updates for agent {} to {full}", agent.id)?;
        }
        None => {
            client.delete_webhook(cfg).await?;
            writeln!(out, "webhook of agent {} removed; `baton serve` can poll with poll = true", agent.id)?;
        }
    }
    Ok(())
}
