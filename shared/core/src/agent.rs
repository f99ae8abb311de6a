//! Agent configuration: the tenant unit. Loaded from a config file, stored in the store,
//! read by the core (policy, messages) and by the adapters (brain, desk, widget).

use crate::messages::MessageOverrides;
use crate::model::{valid_agent_id, Secret};
use serde::{Deserialize, Serialize};

/// Payload schema version of a stored agent.
pub const AGENT_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Default language of system messages (en, de, hr, zh, fr).
    #[serde(default = "default_language")]
    pub language: String,
    #[serde(default)]
    pub brain: BrainConfig,
    #[serde(default)]
    pub desk: DeskConfig,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub widget: WidgetConfig,
    #[serde(default)]
    pub messages: MessageOverrides,
    /// When humans are available; none means always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<crate::hours::ServiceHours>,
    /// Where a request goes when no human can take it (outside hours, desk down).
    #[serde(default)]
    pub fallback: FallbackConfig,
}

/// The escalation fallback used when no human desk can take a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FallbackConfig {
    #[default]
    None,
    /// Open a ticket by POSTing the request to a URL (signed per Standard Webhooks when a
    /// secret is set); a JSON answer `{"ticket_id": "..."}` is shown to the user.
    Ticket {
        url: String,
        #[serde(default)]
        signing_secret: Option<Secret>,
    },
}

fn default_language() -> String {
    "en".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrainConfig {
    /// The offline default: answers from FAQ entries.
    Faq {
        #[serde(default)]
        faq: Vec<FaqEntry>,
        /// Minimum relevance score for an answer; below it the brain says it does not know.
        #[serde(default = "default_min_score")]
        min_score: f64,
    },
}

fn default_min_score() -> f64 {
    1.0
}

impl Default for BrainConfig {
    fn default() -> Self {
        BrainConfig::Faq { faq: Vec::new(), min_score: default_min_score() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaqEntry {
    pub question: String,
    pub answer: String,
    /// Extra words that should find this entry.
    #[serde(default)]
    pub keywords: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeskConfig {
    /// No human desk: handoff requests are answered with the no-desk message.
    #[default]
    None,
    /// Any desk that implements the webhook-desk contract (establish / chat / close).
    Webhook {
        /// Base URL; the hub POSTs `{url}/conversation/establish`, `{url}/chat`, `{url}/conversation/close`.
        url: String,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<Secret>,
        /// `whsec_...` secret; every outbound call is signed per Standard Webhooks when set.
        #[serde(default)]
        signing_secret: Option<Secret>,
    },
}

/// Handoff policy of one agent (seed 004).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Seconds to wait for the first human reply before asking the user to end or keep waiting.
    pub wait_timeout_secs: u64,
    /// Seconds to wait for the user's answer to that question before ending the request.
    pub wait_reply_timeout_secs: u64,
    /// Seconds after the human's last message without a user reply before the session ends.
    pub session_timeout_secs: u64,
    /// Messages transferred to the desk on establish, plus the current question.
    pub history_messages: usize,
    /// Ask for an e-mail on channels that can collect one when none is known.
    pub require_email: bool,
    /// Used for channels that have no e-mail (Telegram, LINE, ...).
    pub default_email: String,
    /// Phrases that hand the user to a human, in any supported language.
    pub handoff_phrases: Vec<String>,
    /// Phrases that end a human session or a pending request.
    pub end_phrases: Vec<String>,
    /// Consecutive turns the brain could not answer before handing off; 0 disables.
    pub max_unanswered: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            wait_timeout_secs: 60,
            wait_reply_timeout_secs: 60,
            session_timeout_secs: 180,
            history_messages: 10,
            require_email: true,
            default_email: "support@example.com".into(),
            handoff_phrases: crate::phrases::DEFAULT_HANDOFF.iter().map(|s| s.to_string()).collect(),
            end_phrases: crate::phrases::DEFAULT_END.iter().map(|s| s.to_string()).collect(),
            max_unanswered: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct WidgetConfig {
    /// Origins allowed to embed the widget and call its API; empty means any.
    pub allowed_origins: Vec<String>,
}

/// One problem in an agent's configuration; `path` names the field (`desk.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

/// A secret given as a reference to AWS SSM Parameter Store (`ssm:/baton/shop/desk`), resolved
/// where it is used, so the table never holds the value.
pub fn is_ssm_reference(s: &Secret) -> bool {
    s.expose().starts_with("ssm:/")
}

impl Agent {
    /// Every secret of the agent's configuration, with the field it sits in.
    pub fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        let mut out: Vec<(&'static str, &mut Secret)> = Vec::new();
        if let DeskConfig::Webhook { password, signing_secret, .. } = &mut self.desk {
            out.extend(password.as_mut().map(|s| ("desk.password", s)));
            out.extend(signing_secret.as_mut().map(|s| ("desk.signing_secret", s)));
        }
        if let FallbackConfig::Ticket { signing_secret, .. } = &mut self.fallback {
            out.extend(signing_secret.as_mut().map(|s| ("fallback.signing_secret", s)));
        }
        out
    }

    /// Semantic checks that serde cannot express. Empty when the agent is valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |path: &str, message: String| out.push(ConfigProblem { path: path.into(), message });
        if !valid_agent_id(&self.id) {
            bad("id", "must be 1-64 characters of a-z, 0-9, '-' or '_'".into());
        }
        if !crate::messages::LANGUAGES.contains(&self.language.as_str()) {
            bad(
                "language",
                format!("unsupported language {:?}; use one of {:?}", self.language, crate::messages::LANGUAGES),
            );
        }
        if let DeskConfig::Webhook { url, username, password, signing_secret } = &self.desk {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bad("desk.url", format!("must be an http:// or https:// URL, got {url:?}"));
            }
            if password.is_some() && username.is_none() {
                bad("desk.username", "is required when desk.password is set".into());
            }
            if let Some(s) = signing_secret.as_ref().filter(|s| !is_ssm_reference(s)) {
                if !s.expose().starts_with("whsec_") {
                    bad("desk.signing_secret", "must be a Standard Webhooks secret starting with whsec_".into());
                }
            }
        }
        let p = &self.policy;
        for (name, v) in [
            ("policy.wait_timeout_secs", p.wait_timeout_secs),
            ("policy.wait_reply_timeout_secs", p.wait_reply_timeout_secs),
            ("policy.session_timeout_secs", p.session_timeout_secs),
        ] {
            if v == 0 || v > 86_400 {
                bad(name, format!("must be between 1 and 86400 seconds, got {v}"));
            }
        }
        if p.history_messages > 100 {
            bad("policy.history_messages", format!("must be at most 100, got {}", p.history_messages));
        }
        if !crate::email::is_valid(&p.default_email) {
            bad("policy.default_email", format!("{:?} is not an e-mail address", p.default_email));
        }
        let BrainConfig::Faq { faq, min_score } = &self.brain;
        if !(min_score.is_finite() && *min_score >= 0.0) {
            bad("brain.min_score", "must be a non-negative number".into());
        }
        for (i, e) in faq.iter().enumerate() {
            if e.question.trim().is_empty() {
                bad(&format!("brain.faq[{i}].question"), "must not be empty".into());
            }
            if e.answer.trim().is_empty() {
                bad(&format!("brain.faq[{i}].answer"), "must not be empty".into());
            }
        }
        if let Some(hours) = &self.hours {
            if let Err(problems) = hours.compile() {
                for (path, message) in problems {
                    bad(&path, message);
                }
            }
        }
        if let FallbackConfig::Ticket { url, signing_secret } = &self.fallback {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bad("fallback.url", format!("must be an http:// or https:// URL, got {url:?}"));
            }
            if signing_secret.as_ref().is_some_and(|s| !is_ssm_reference(s) && !s.expose().starts_with("whsec_")) {
                bad("fallback.signing_secret", "must be a Standard Webhooks secret starting with whsec_".into());
            }
        }
        for (lang, _) in self.messages.iter() {
            if !crate::messages::LANGUAGES.contains(&lang.as_str()) {
                bad(
                    &format!("messages.{lang}"),
                    format!("unsupported language; use one of {:?}", crate::messages::LANGUAGES),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        Agent {
            id: "demo".into(),
            name: String::new(),
            language: "en".into(),
            brain: BrainConfig::default(),
            desk: DeskConfig::None,
            policy: Policy::default(),
            widget: WidgetConfig::default(),
            messages: Default::default(),
            hours: None,
            fallback: FallbackConfig::None,
        }
    }

    #[test]
    fn default_agent_is_valid() {
        assert_eq!(agent().validate(), vec![]);
    }

    #[test]
    fn problems_name_the_field() {
        let mut a = agent();
        a.id = "Bad Id".into();
        a.policy.wait_timeout_secs = 0;
        a.desk = DeskConfig::Webhook {
            url: "ftp://x".into(),
            username: None,
            password: Some(Secret("p".into())),
            signing_secret: Some(Secret("nope".into())),
        };
        let paths: Vec<_> = a.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["id", "desk.url", "desk.username", "desk.signing_secret", "policy.wait_timeout_secs"]);
    }
}
