//! The example agent created on first start, so a newcomer sees a working flow with no
//! configuration: a small multilingual FAQ, and the operator console as its desk.

use baton_core::agent::{Agent, BrainConfig, DeskConfig, FaqEntry, Policy, WidgetConfig};
use baton_core::model::Secret;
use baton_core::ports::{Store, StoreError};
use baton_core::Millis;
use baton_embedded::{ConsoleStore, Db};
use serde::{Deserialize, Serialize};

pub const EXAMPLE_AGENT: &str = "demo";
const MANAGED: &str = "example_agent_managed";

/// What the console (a desk like any other) keeps to talk to the hub and verify it.
#[derive(Serialize, Deserialize)]
pub struct ConsoleCredential {
    pub token: String,
    pub signing_secret: String,
}

fn faq(q: &str, a: &str) -> FaqEntry {
    FaqEntry { question: q.into(), answer: a.into(), keywords: Vec::new() }
}

pub fn example_agent(hub_base: &str, signing_secret: &str) -> Agent {
    Agent {
        actions: Default::default(),
        api: None,
        id: EXAMPLE_AGENT.into(),
        name: "Baton demo shop".into(),
        language: "en".into(),
        brain: BrainConfig::Faq {
            faq: vec![
                faq("What are your opening hours?", "We are open Monday to Friday, 9:00 to 17:00 (Europe/Zagreb)."),
                faq("How long does shipping take?", "Orders ship within 1-2 working days; delivery takes 2-4 days."),
                faq(
                    "How can I return an item?",
                    "You can return any item within 30 days. Write 'human' and our team sends you a return label.",
                ),
                faq("Wie sind Ihre Öffnungszeiten?", "Wir haben Montag bis Freitag von 9:00 bis 17:00 Uhr geöffnet."),
                faq("Koje je vaše radno vrijeme?", "Radimo od ponedjeljka do petka, od 9:00 do 17:00."),
                faq("你们的营业时间是什么？", "我们的营业时间是周一至周五 9:00 至 17:00。"),
                faq(
                    "Quels sont vos horaires d'ouverture ?",
                    "Nous sommes ouverts du lundi au vendredi, de 9h00 à 17h00.",
                ),
            ],
            min_score: 1.0,
        },
        desk: DeskConfig::Webhook {
            url: format!("{hub_base}/console/desk"),
            username: None,
            password: None,
            signing_secret: Some(Secret(signing_secret.to_string())),
        },
        policy: Policy::default(),
        widget: WidgetConfig::default(),
        messages: Default::default(),
        hours: None,
        fallback: Default::default(),
        channels: Default::default(),
        salesiq: None,
        intercom: None,
        livechat: None,
    }
}

/// Create the example agent when the store has no agents; keep its console URL current
/// when the port changes. Returns the agent token when it was created now (shown once).
pub async fn ensure_example_agent(
    db: &Db,
    console: &ConsoleStore,
    hub_base: &str,
    now: Millis,
) -> Result<Option<String>, StoreError> {
    let managed = db.setting(MANAGED).await?.is_some();
    if managed {
        if let (Some(mut agent), Some(cred)) =
            (db.get_agent(EXAMPLE_AGENT).await?, console.credential(EXAMPLE_AGENT).await?)
        {
            if let Ok(cred) = serde_json::from_str::<ConsoleCredential>(cred.expose()) {
                let fresh = example_agent(hub_base, &cred.signing_secret);
                if agent.desk != fresh.desk {
                    agent.desk = fresh.desk;
                    db.put_agent(&agent).await?;
                }
            }
        }
        return Ok(None);
    }
    if !db.list_agents().await?.is_empty() {
        return Ok(None);
    }
    let signing_secret = baton_connectors::standard_webhooks::generate_secret();
    let token = baton_runtime::auth::generate_token();
    db.put_agent(&example_agent(hub_base, &signing_secret)).await?;
    db.add_token(EXAMPLE_AGENT, &baton_runtime::auth::hash_token(&token), now).await?;
    let cred = ConsoleCredential { token: token.clone(), signing_secret };
    console.set_credential(EXAMPLE_AGENT, &serde_json::to_string(&cred).unwrap_or_default()).await?;
    db.set_setting(MANAGED, "1").await?;
    Ok(Some(token))
}
