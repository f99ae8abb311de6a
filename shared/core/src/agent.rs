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
    /// Messaging channels connected to this agent besides the widget.
    #[serde(default)]
    pub channels: ChannelsConfig,
    /// The agent's Zoho SalesIQ account: a channel (the AI answers inside SalesIQ) and,
    /// with `desk.kind = "salesiq"`, the human desk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salesiq: Option<SalesiqConfig>,
    /// The agent's Intercom workspace: a channel (the AI answers in Messenger) and, with
    /// `desk.kind = "intercom"`, the human desk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercom: Option<IntercomConfig>,
    /// The agent's LiveChat account: a channel (a bot agent answers chats) and, with
    /// `desk.kind = "livechat"`, the human desk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub livechat: Option<LivechatConfig>,
    /// Calls into the customer's systems the brain may make (tools of an LLM brain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionConfig>,
    /// The Agent API (`POST /converse/chat`): where its events go and how its sessions live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiConfig>,
}

/// The Agent API of seed 003: an integration (a custom front-end, a voice assistant, a
/// platform connector) converses under its own conversation ids; the agent's messages and
/// escalations are POSTed to `converse_url` as `sendMessage` / `escalate` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The integration's converse webhook; without one, replies are read with the
    /// synchronous mode (`Prefer: wait=N`) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converse_url: Option<String>,
    /// `whsec_...`: every delivery is signed per Standard Webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<Secret>,
    /// A session ends this long after its last message sent or received (default 2 hours);
    /// the next message starts a new one under the same conversation id.
    #[serde(default = "default_api_session_expiry")]
    pub session_expiry_secs: u64,
    /// Sent when a session starts (`startSession`); empty sends nothing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub welcome: String,
    /// Who takes a handoff of an API conversation.
    #[serde(default)]
    pub escalation: ApiEscalation,
}

/// How long an Agent API session lives after its last message unless configured.
pub const DEFAULT_API_SESSION_EXPIRY_SECS: u64 = 2 * 60 * 60;

fn default_api_session_expiry() -> u64 {
    DEFAULT_API_SESSION_EXPIRY_SECS
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            converse_url: None,
            signing_secret: None,
            session_expiry_secs: default_api_session_expiry(),
            welcome: String::new(),
            escalation: ApiEscalation::default(),
        }
    }
}

/// Where handoffs of Agent API conversations go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "to", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiEscalation {
    /// The agent's desk, like any channel; the human's replies come back as `sendMessage`.
    #[default]
    Desk,
    /// The integration's own humans: an `escalate` event, carrying `transfer_to` (a phone
    /// number or queue a voice front-end forwards the call to) when set.
    Caller {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer_to: Option<String>,
        /// Ask the integration first (`isTeamOnline`, answered `{"isOnline": bool}`); when
        /// nobody is online the user gets the unavailable answer and the fallback runs.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ask_team_online: bool,
    },
}

/// One action: a POST to the customer's endpoint with inputs from the session (or the
/// model), whose answer's values are saved as session parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// The tool's name: 1-64 of `a-z 0-9 _`.
    pub name: String,
    /// When to use it, for the model.
    pub description: String,
    /// Session parameters sent as `inputs` (the model may supply them too).
    #[serde(default)]
    pub inputs: Vec<String>,
    pub url: String,
    /// `whsec_...`: calls are signed per Standard Webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<Secret>,
    /// Session parameter -> JSON pointer into the answer (`/customer/id`).
    #[serde(default)]
    pub outputs: std::collections::BTreeMap<String, String>,
    /// Outputs that are personal data: masked wherever humans see the parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sanitize: Vec<String>,
    /// The wire format of the call.
    #[serde(default, skip_serializing_if = "ActionFormat::is_baton")]
    pub format: ActionFormat,
    /// Per attempt, 1-20 s.
    #[serde(default = "default_action_timeout")]
    pub timeout_secs: u64,
    /// Further attempts on 429, 5xx and timeouts, 0-3.
    #[serde(default = "default_action_retries")]
    pub retries: u32,
}

/// How an action is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActionFormat {
    /// `{"action", "conversation", "inputs": {..}}`; `outputs` pick values from the answer.
    #[default]
    Baton,
    /// The actions webhook of seed 003's contract (Zendesk AI agents - Advanced), so an
    /// integration built for it serves the hub's actions: `{"botId", "platformConversationId",
    /// "name", "data": [{"key", "value": [v]}]}` answered `{"results": [{"key", "value",
    /// "sanitize"?}]}`; every result becomes a session parameter.
    Contract,
}

impl ActionFormat {
    fn is_baton(&self) -> bool {
        *self == ActionFormat::Baton
    }
}

fn default_action_timeout() -> u64 {
    10
}

fn default_action_retries() -> u32 {
    2
}

/// Tool names the LLM brain defines itself; actions may not take them.
pub const BUILT_IN_TOOLS: &[&str] = &[
    "handoff",
    "identify_caller",
    "search_products",
    "prepare_order",
    "change_order",
    "cancel_order",
    "commit_order",
    "top_products",
    "reorder",
    "order_status",
    "complaint_status",
    "current_promotions",
];

/// Channels besides the widget, each optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telegram: Option<TelegramConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<LineConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<WhatsappConfig>,
}

/// A WhatsApp Business phone number on the Cloud API (Meta Graph).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappConfig {
    /// The sending number's id (WhatsApp Manager > API setup).
    pub phone_number_id: String,
    /// A system user's permanent access token.
    pub access_token: Secret,
    /// The Meta app's secret: the key of `X-Hub-Signature-256`.
    pub app_secret: Secret,
    /// The token Meta echoes in the subscription handshake (`hub.verify_token`).
    pub verify_token: Secret,
    #[serde(default = "default_graph_api")]
    pub api_base: String,
    /// Graph API version in every path.
    #[serde(default = "default_graph_version")]
    pub api_version: String,
    /// Approved template sent when a human replies after the 24-hour window closed; its
    /// body's first parameter carries the reply. Without one, such replies are reported to
    /// the desk as undeliverable.
    #[serde(default)]
    pub window_template: Option<WhatsappTemplate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappTemplate {
    pub name: String,
    /// Template language code, e.g. `en_US`.
    pub language: String,
}

pub fn default_graph_api() -> String {
    "https://graph.facebook.com".into()
}

pub fn default_graph_version() -> String {
    "v21.0".into()
}

/// An Intercom workspace and the app the hub acts through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntercomConfig {
    /// REST host of the workspace's region: `https://api.intercom.io` (US),
    /// `https://api.eu.intercom.io`, `https://api.au.intercom.io`.
    #[serde(default = "default_intercom_api")]
    pub api_base: String,
    /// The app's access token.
    pub access_token: Secret,
    /// The app's client secret: the key of `X-Hub-Signature`.
    pub client_secret: Secret,
    /// `Intercom-Version` sent on every call (pinned, so payloads do not change under us).
    #[serde(default = "default_intercom_version")]
    pub api_version: String,
    /// The teammate (admin) the hub writes as in Messenger conversations; its replies come
    /// back as webhooks and are never taken for a human's.
    pub bot_admin_id: String,
    /// Answer users who write in Intercom Messenger (desk -> desk). Off: Intercom is only a desk.
    #[serde(default = "default_true")]
    pub answer_users: bool,
}

pub fn default_intercom_api() -> String {
    "https://api.intercom.io".into()
}

pub fn default_intercom_version() -> String {
    "2.11".into()
}

/// A LiveChat (Text platform) account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivechatConfig {
    #[serde(default = "default_livechat_api")]
    pub api_base: String,
    #[serde(default = "default_livechat_accounts")]
    pub accounts_base: String,
    pub organization_id: String,
    /// OAuth client of the hub's LiveChat app.
    pub client_id: String,
    pub client_secret: Secret,
    /// Refresh token of an agent, from `baton desks livechat authorize` (customer tokens
    /// need an OAuth agent token; a personal access token is not accepted there).
    pub refresh_token: Secret,
    /// The `secret_key` registered with the webhooks; LiveChat sends it in every body.
    pub webhook_secret: Secret,
    /// The bot agent that answers LiveChat chats (desk -> desk), and its secret.
    #[serde(default)]
    pub bot_agent_id: Option<String>,
    #[serde(default)]
    pub bot_secret: Option<Secret>,
}

pub fn default_livechat_api() -> String {
    "https://api.livechatinc.com".into()
}

pub fn default_livechat_accounts() -> String {
    "https://accounts.livechat.com".into()
}

/// A Telegram bot (Bot API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The token from @BotFather.
    pub bot_token: Secret,
    /// `secret_token` registered with `setWebhook`; Telegram sends it on every webhook call.
    pub secret_token: Secret,
    /// Bot API base URL.
    #[serde(default = "default_telegram_api")]
    pub api_base: String,
    /// `baton serve` fetches updates with `getUpdates` instead of receiving the webhook
    /// (local use without a public URL).
    #[serde(default)]
    pub poll: bool,
}

pub fn default_telegram_api() -> String {
    "https://api.telegram.org".into()
}

/// A LINE Messaging API channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    /// Channel secret: the key of `X-Line-Signature`.
    pub channel_secret: Secret,
    /// Long-lived channel access token.
    pub access_token: Secret,
    /// Messaging API base URL.
    #[serde(default = "default_line_api")]
    pub api_base: String,
}

pub fn default_line_api() -> String {
    "https://api.line.me".into()
}

/// A Zoho SalesIQ portal and the OAuth client the hub uses for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesiqConfig {
    /// REST API server of the portal's data centre.
    #[serde(default = "default_salesiq_server")]
    pub server: String,
    /// Zoho Accounts server of the same data centre (the `accounts-server` of the grant).
    #[serde(default = "default_zoho_accounts")]
    pub accounts_server: String,
    /// The portal's screen name (in every API path).
    pub screen_name: String,
    /// Brand (app) id of the chat widget visitors write in.
    pub app_id: String,
    /// OAuth client (Self Client or Org client) and its offline refresh token.
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_token: Secret,
    /// Public keys of "Secure your webhook" (PEM or base64 DER); two during a rotation.
    #[serde(default)]
    pub webhook_public_keys: Vec<String>,
    /// The operator (user) id the hub's token posts as; its messages come back as
    /// `conversation.operator.replied` and are never taken for a human's reply.
    #[serde(default)]
    pub bot_operator_id: Option<String>,
    /// Answer visitors who write in SalesIQ itself (the AI proxy). Off: SalesIQ is only a desk.
    #[serde(default = "default_true")]
    pub answer_visitors: bool,
}

fn default_true() -> bool {
    true
}

pub fn default_salesiq_server() -> String {
    "https://salesiq.zoho.com".into()
}

pub fn default_zoho_accounts() -> String {
    "https://accounts.zoho.com".into()
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
    /// E-mail the request (summary, reason, history) to the team over SMTP, or, for local use,
    /// write it as an `.eml` file into `capture_dir` instead of sending it.
    Email {
        /// `smtps://user:password@smtp.example.com:465` or `smtp://...:587?tls=required`
        /// (a secret: it holds the password).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        smtp_url: Option<Secret>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capture_dir: Option<String>,
        from: String,
        to: Vec<String>,
    },
    /// Send an approved WhatsApp template to a sales representative's number, through the
    /// agent's WhatsApp channel; its body parameter carries the request.
    Whatsapp { to: String, template: WhatsappTemplate },
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
    /// A model behind any OpenAI-compatible chat-completions endpoint, with a `handoff` tool.
    Llm(Box<LlmConfig>),
    /// A hosted AI agent speaking seed 003's contract (Zendesk AI agents - Advanced): each user
    /// message goes to its converse endpoint; its answers, escalations, team-status questions
    /// and action triggers come back to the hub's webhooks.
    Hosted(HostedAgentConfig),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostedAgentConfig {
    /// The Chat API base (`https://api.ultimate.ai`); the hub POSTs `{base_url}/converse/chat`.
    #[serde(default = "default_hosted_api")]
    pub base_url: String,
    /// The hosted agent's bot id (the `botid` header).
    pub bot_id: String,
    /// Its access token (the `Authorization` header).
    pub api_key: Secret,
    /// A random string of at least 24 characters, part of the webhook URLs given to the hosted
    /// agent (`/brains/hosted/{agent}/{webhook_secret}/converse` and `.../actions`): the
    /// contract documents no signature for its webhooks, so the URL is what proves them.
    pub webhook_secret: Secret,
    /// Per request to the converse endpoint, 1-20 s.
    #[serde(default = "default_action_timeout")]
    pub timeout_secs: u64,
}

pub fn default_hosted_api() -> String {
    "https://api.ultimate.ai".into()
}

/// Whether `s` can be the path segment of a hosted agent's webhook URLs.
pub fn valid_webhook_secret(s: &str) -> bool {
    (24..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn default_min_score() -> f64 {
    1.0
}

/// An OpenAI-compatible chat-completions model (OpenAI, Azure OpenAI, Mistral, a local
/// server, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// Up to and including the version, e.g. `https://api.openai.com/v1`; the hub POSTs to
    /// `{base_url}/chat/completions`.
    pub base_url: String,
    pub model: String,
    pub api_key: Secret,
    /// What the model is told first: who it is, what it may do, its tone.
    #[serde(default)]
    pub system_prompt: String,
    /// When the model should hand the user to a human: the description of its `handoff` tool.
    #[serde(default = "default_handoff_description")]
    pub handoff_description: String,
    /// Entries the model gets as context, the most relevant ones for each question.
    #[serde(default)]
    pub knowledge: Vec<FaqEntry>,
    /// Longest answer, in tokens.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Tokens one conversation may use; after that the user is handed to a human.
    #[serde(default = "default_conversation_tokens")]
    pub conversation_token_budget: u64,
    /// Tokens the agent may use per UTC day; after that users are handed to a human.
    #[serde(default = "default_daily_tokens")]
    pub daily_token_budget: u64,
    /// How long one call may take (1-50 s; the worker's own limit is 60 s).
    #[serde(default = "default_llm_timeout")]
    pub timeout_secs: u64,
    /// The customer's ERP middleware (`docs/erp-openapi.yaml`): the model gets tools to
    /// identify the caller, search products and prepare, change, cancel and commit orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erp: Option<ErpConfig>,
}

/// The REST middleware in front of an ERP, as `docs/erp-openapi.yaml` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErpConfig {
    pub base_url: String,
    pub api_key: Secret,
    /// The optional endpoints this ERP offers; each becomes a tool of the model.
    #[serde(default)]
    pub extras: Vec<ErpExtra>,
}

/// Optional parts of the ERP contract (`docs/erp-openapi.yaml`, tag `extras`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErpExtra {
    /// `GET /contacts/{id}/top-products`: what the customer orders most.
    TopProducts,
    /// `POST /orders/{id}/reorder`: prepare a past order again.
    Reorder,
    /// `GET /orders/{id}`: status and delivery estimate.
    OrderStatus,
    /// `GET /contacts/{id}/complaints`.
    Complaints,
    /// `GET /promotions`.
    Promotions,
}

pub fn default_handoff_description() -> String {
    "Hand the conversation to a human colleague: when the user asks for a person, when you cannot \
     help with the request, or when the user is upset."
        .into()
}

fn default_max_tokens() -> u32 {
    500
}

fn default_conversation_tokens() -> u64 {
    50_000
}

fn default_daily_tokens() -> u64 {
    2_000_000
}

fn default_llm_timeout() -> u64 {
    30
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
    /// Zoho SalesIQ (credentials in the agent's `salesiq` section). Users of other channels
    /// get a SalesIQ conversation opened as a visitor; users already in SalesIQ are
    /// transferred to the department inside their own conversation.
    Salesiq {
        department_id: String,
        /// A specific operator to transfer to; else anyone available in the department.
        #[serde(default)]
        operator_id: Option<String>,
    },
    /// Intercom (credentials in the agent's `intercom` section): users of other channels get
    /// a conversation as an Intercom contact; Messenger users are assigned inside theirs.
    Intercom {
        /// Team the conversation is assigned to on handoff.
        #[serde(default)]
        team_id: Option<String>,
        /// Or a specific teammate.
        #[serde(default)]
        admin_id: Option<String>,
    },
    /// LiveChat (credentials in the agent's `livechat` section): users of other channels get
    /// a chat started as a customer in the group; LiveChat chats are transferred to it.
    Livechat { group_id: u64 },
}

impl DeskConfig {
    /// Whether users on `channel` already sit in this desk's own messenger, so a handoff
    /// is a transfer inside their conversation rather than a relay to a new one.
    pub fn hosts(&self, channel: crate::model::Channel) -> bool {
        use crate::model::Channel;
        matches!(
            (self, channel),
            (DeskConfig::Salesiq { .. }, Channel::Salesiq)
                | (DeskConfig::Intercom { .. }, Channel::Intercom)
                | (DeskConfig::Livechat { .. }, Channel::Livechat)
        )
    }
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
    /// Days a conversation's transcript and session data are kept after its last event;
    /// then they are deleted (DynamoDB TTL; the embedded store's hourly purge).
    pub retention_days: u32,
}

impl Policy {
    /// When the data of a conversation whose last event was at `now` is deleted.
    pub fn keep_until(&self, now: crate::Millis) -> crate::Millis {
        crate::Millis(now.0.saturating_add(i64::from(self.retention_days) * 86_400_000))
    }
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
            retention_days: 30,
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
    /// Every HTTP endpoint the agent's configuration makes the hub call, with its field.
    pub fn outbound_urls<'a>(&'a self) -> Vec<(String, &'a str)> {
        let mut urls = Vec::new();
        let mut add = |path: &str, url: &'a str| urls.push((path.to_string(), url));
        if let DeskConfig::Webhook { url, .. } = &self.desk {
            add("desk.url", url);
        }
        match &self.brain {
            BrainConfig::Faq { .. } => {}
            BrainConfig::Llm(l) => {
                add("brain.base_url", &l.base_url);
                if let Some(erp) = &l.erp {
                    add("brain.erp.base_url", &erp.base_url);
                }
            }
            BrainConfig::Hosted(h) => add("brain.base_url", &h.base_url),
        }
        if let Some(url) = self.api.as_ref().and_then(|a| a.converse_url.as_deref()) {
            add("api.converse_url", url);
        }
        if let FallbackConfig::Ticket { url, .. } = &self.fallback {
            add("fallback.url", url);
        }
        if let Some(w) = &self.channels.whatsapp {
            add("channels.whatsapp.api_base", &w.api_base);
        }
        if let Some(t) = &self.channels.telegram {
            add("channels.telegram.api_base", &t.api_base);
        }
        if let Some(l) = &self.channels.line {
            add("channels.line.api_base", &l.api_base);
        }
        if let Some(i) = &self.intercom {
            add("intercom.api_base", &i.api_base);
        }
        if let Some(l) = &self.livechat {
            add("livechat.api_base", &l.api_base);
            add("livechat.accounts_base", &l.accounts_base);
        }
        if let Some(z) = &self.salesiq {
            add("salesiq.server", &z.server);
            add("salesiq.accounts_server", &z.accounts_server);
        }
        for (i, a) in self.actions.iter().enumerate() {
            add(&format!("actions[{i}].url"), &a.url);
        }
        urls
    }

    /// The configured endpoints that name a loopback, private or link-local host directly
    /// (names are checked when resolved). A deployment serving other people's agents refuses
    /// them, unless its operator allows private targets for local use.
    pub fn non_public_targets(&self) -> Vec<ConfigProblem> {
        let mut targets: Vec<(String, String)> =
            self.outbound_urls().into_iter().map(|(path, url)| (path, url.to_string())).collect();
        if let FallbackConfig::Email { smtp_url: Some(smtp), .. } = &self.fallback {
            if !is_ssm_reference(smtp) {
                targets.push(("fallback.smtp_url".into(), smtp.expose().to_string()));
            }
        }
        targets
            .into_iter()
            .filter_map(|(path, url)| {
                let host = crate::net::non_public_host(&url)?;
                let message = format!("points at {host}, a loopback, private or link-local address");
                Some(ConfigProblem { path, message })
            })
            .collect()
    }

    /// Which of `params` the agent's actions mark as personal data.
    pub fn sanitized_outputs<'a>(
        &self,
        params: impl IntoIterator<Item = &'a String>,
    ) -> std::collections::BTreeSet<String> {
        params.into_iter().filter(|p| self.actions.iter().any(|a| a.sanitize.contains(p))).cloned().collect()
    }

    /// Whether a human could take a handoff now: a desk is configured and not known to be
    /// down, and the service hours are open.
    pub fn humans_available(
        &self,
        now: crate::model::Millis,
        desk_status: Option<crate::model::ServiceStatus>,
    ) -> bool {
        let open = self.hours.as_ref().and_then(|h| h.compile().ok()).is_none_or(|s| s.is_open(now));
        !matches!(self.desk, DeskConfig::None) && desk_status != Some(crate::model::ServiceStatus::Unavailable) && open
    }

    /// Every secret of the agent's configuration, with the field it sits in.
    pub fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        let mut out: Vec<(&'static str, &mut Secret)> = Vec::new();
        if let DeskConfig::Webhook { password, signing_secret, .. } = &mut self.desk {
            out.extend(password.as_mut().map(|s| ("desk.password", s)));
            out.extend(signing_secret.as_mut().map(|s| ("desk.signing_secret", s)));
        }
        match &mut self.fallback {
            FallbackConfig::Ticket { signing_secret, .. } => {
                out.extend(signing_secret.as_mut().map(|s| ("fallback.signing_secret", s)))
            }
            FallbackConfig::Email { smtp_url, .. } => out.extend(smtp_url.as_mut().map(|s| ("fallback.smtp_url", s))),
            FallbackConfig::None | FallbackConfig::Whatsapp { .. } => {}
        }
        if let Some(t) = &mut self.channels.telegram {
            out.push(("channels.telegram.bot_token", &mut t.bot_token));
            out.push(("channels.telegram.secret_token", &mut t.secret_token));
        }
        if let Some(l) = &mut self.channels.line {
            out.push(("channels.line.channel_secret", &mut l.channel_secret));
            out.push(("channels.line.access_token", &mut l.access_token));
        }
        if let Some(z) = &mut self.salesiq {
            out.push(("salesiq.client_secret", &mut z.client_secret));
            out.push(("salesiq.refresh_token", &mut z.refresh_token));
        }
        for a in &mut self.actions {
            out.extend(a.signing_secret.as_mut().map(|s| ("actions[].signing_secret", s)));
        }
        if let Some(api) = &mut self.api {
            out.extend(api.signing_secret.as_mut().map(|s| ("api.signing_secret", s)));
        }
        match &mut self.brain {
            BrainConfig::Llm(l) => {
                out.push(("brain.api_key", &mut l.api_key));
                out.extend(l.erp.as_mut().map(|e| ("brain.erp.api_key", &mut e.api_key)));
            }
            BrainConfig::Hosted(h) => {
                out.push(("brain.api_key", &mut h.api_key));
                out.push(("brain.webhook_secret", &mut h.webhook_secret));
            }
            BrainConfig::Faq { .. } => {}
        }
        if let Some(w) = &mut self.channels.whatsapp {
            out.push(("channels.whatsapp.access_token", &mut w.access_token));
            out.push(("channels.whatsapp.app_secret", &mut w.app_secret));
            out.push(("channels.whatsapp.verify_token", &mut w.verify_token));
        }
        if let Some(i) = &mut self.intercom {
            out.push(("intercom.access_token", &mut i.access_token));
            out.push(("intercom.client_secret", &mut i.client_secret));
        }
        if let Some(l) = &mut self.livechat {
            out.push(("livechat.client_secret", &mut l.client_secret));
            out.push(("livechat.refresh_token", &mut l.refresh_token));
            out.push(("livechat.webhook_secret", &mut l.webhook_secret));
            out.extend(l.bot_secret.as_mut().map(|s| ("livechat.bot_secret", s)));
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
        for (path, url) in self.outbound_urls() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bad(&path, format!("must be an http:// or https:// URL, got {url:?}"));
            }
        }
        if let DeskConfig::Webhook { username, password, signing_secret, .. } = &self.desk {
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
        if p.retention_days == 0 || p.retention_days > 3650 {
            bad("policy.retention_days", format!("must be between 1 and 3650 days, got {}", p.retention_days));
        }
        if p.history_messages > 100 {
            bad("policy.history_messages", format!("must be at most 100, got {}", p.history_messages));
        }
        if !crate::email::is_valid(&p.default_email) {
            bad("policy.default_email", format!("{:?} is not an e-mail address", p.default_email));
        }
        let (entries_path, entries) = match &self.brain {
            BrainConfig::Faq { faq, min_score } => {
                if !(min_score.is_finite() && *min_score >= 0.0) {
                    bad("brain.min_score", "must be a non-negative number".into());
                }
                ("brain.faq", faq)
            }
            BrainConfig::Llm(l) => {
                if l.model.trim().is_empty() {
                    bad("brain.model", "must not be empty".into());
                }
                if l.max_tokens == 0 || l.max_tokens > 32_000 {
                    bad("brain.max_tokens", format!("must be between 1 and 32000, got {}", l.max_tokens));
                }
                if l.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
                    bad("brain.temperature", "must be between 0 and 2".into());
                }
                if l.timeout_secs == 0 || l.timeout_secs > 50 {
                    bad("brain.timeout_secs", format!("must be between 1 and 50 seconds, got {}", l.timeout_secs));
                }
                if l.handoff_description.trim().is_empty() {
                    bad("brain.handoff_description", "must not be empty".into());
                }
                ("brain.knowledge", &l.knowledge)
            }
            BrainConfig::Hosted(h) => {
                if h.bot_id.trim().is_empty() || h.bot_id.len() > 64 {
                    bad("brain.bot_id", "must be 1-64 characters".into());
                }
                if !is_ssm_reference(&h.webhook_secret) && !valid_webhook_secret(h.webhook_secret.expose()) {
                    bad(
                        "brain.webhook_secret",
                        "must be 24-128 characters of A-Z, a-z, 0-9, - or _ (it is part of a URL)".into(),
                    );
                }
                if h.timeout_secs == 0 || h.timeout_secs > 20 {
                    bad("brain.timeout_secs", format!("must be between 1 and 20 seconds, got {}", h.timeout_secs));
                }
                ("brain.faq", &Vec::new())
            }
        };
        for (i, e) in entries.iter().enumerate() {
            if e.question.trim().is_empty() {
                bad(&format!("{entries_path}[{i}].question"), "must not be empty".into());
            }
            if e.answer.trim().is_empty() {
                bad(&format!("{entries_path}[{i}].answer"), "must not be empty".into());
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, a) in self.actions.iter().enumerate() {
            let at = |f: &str| format!("actions[{i}].{f}");
            let valid = !a.name.is_empty()
                && a.name.len() <= 64
                && a.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                bad(&at("name"), "must be 1-64 of a-z, 0-9 and _".into());
            } else if BUILT_IN_TOOLS.contains(&a.name.as_str()) || !names.insert(a.name.as_str()) {
                bad(&at("name"), format!("{:?} is taken by a built-in tool or another action", a.name));
            }
            if a.description.trim().is_empty() {
                bad(&at("description"), "must say when to use it".into());
            }
            if a.signing_secret.as_ref().is_some_and(|s| !is_ssm_reference(s) && !s.expose().starts_with("whsec_")) {
                bad(&at("signing_secret"), "must be a Standard Webhooks secret starting with whsec_".into());
            }
            for (param, pointer) in &a.outputs {
                if !pointer.starts_with('/') {
                    bad(
                        &at(&format!("outputs.{param}")),
                        format!("must be a JSON pointer like /customer/id, got {pointer:?}"),
                    );
                }
            }
            for (j, s) in a.sanitize.iter().enumerate() {
                if !a.outputs.contains_key(s) {
                    bad(&at(&format!("sanitize[{j}]")), format!("{s:?} is not one of the action's outputs"));
                }
            }
            if a.timeout_secs == 0 || a.timeout_secs > 20 {
                bad(&at("timeout_secs"), format!("must be between 1 and 20 seconds, got {}", a.timeout_secs));
            }
            if a.retries > 3 {
                bad(&at("retries"), format!("must be at most 3, got {}", a.retries));
            }
        }
        if let Some(api) = &self.api {
            if api.signing_secret.as_ref().is_some_and(|s| !is_ssm_reference(s) && !s.expose().starts_with("whsec_")) {
                bad("api.signing_secret", "must be a Standard Webhooks secret starting with whsec_".into());
            }
            if !(60..=7 * 86_400).contains(&api.session_expiry_secs) {
                bad(
                    "api.session_expiry_secs",
                    format!("must be between 60 and 604800 seconds, got {}", api.session_expiry_secs),
                );
            }
            if let ApiEscalation::Caller { transfer_to: Some(t), .. } = &api.escalation {
                if t.trim().is_empty() || t.len() > 200 {
                    bad("api.escalation.transfer_to", "must be 1-200 characters (a phone number or queue)".into());
                }
            }
        }
        if let Some(hours) = &self.hours {
            if let Err(problems) = hours.compile() {
                for (path, message) in problems {
                    bad(&path, message);
                }
            }
        }
        if let FallbackConfig::Ticket { signing_secret, .. } = &self.fallback {
            if signing_secret.as_ref().is_some_and(|s| !is_ssm_reference(s) && !s.expose().starts_with("whsec_")) {
                bad("fallback.signing_secret", "must be a Standard Webhooks secret starting with whsec_".into());
            }
        }
        if let FallbackConfig::Email { smtp_url, capture_dir, from, to } = &self.fallback {
            match (smtp_url, capture_dir) {
                (Some(_), Some(_)) | (None, None) => bad(
                    "fallback.smtp_url",
                    "give either smtp_url (to send) or capture_dir (to write .eml files)".into(),
                ),
                (Some(url), None) if !is_ssm_reference(url) => {
                    let u = url.expose();
                    if !(u.starts_with("smtp://") || u.starts_with("smtps://")) {
                        bad("fallback.smtp_url", "must start with smtp:// or smtps://".into());
                    }
                }
                _ => {}
            }
            if !crate::email::is_valid(from) {
                bad("fallback.from", format!("{from:?} is not an e-mail address"));
            }
            if to.is_empty() {
                bad("fallback.to", "needs at least one address".into());
            }
            for (i, t) in to.iter().enumerate() {
                if !crate::email::is_valid(t) {
                    bad(&format!("fallback.to[{i}]"), format!("{t:?} is not an e-mail address"));
                }
            }
        }
        if let FallbackConfig::Whatsapp { to, template } = &self.fallback {
            if self.channels.whatsapp.is_none() {
                bad(
                    "fallback",
                    "kind = \"whatsapp\" sends through the agent's [channels.whatsapp]; configure it".into(),
                );
            }
            let digits = to.trim().trim_start_matches('+');
            if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                bad("fallback.to", format!("must be a phone number in international format, got {to:?}"));
            }
            if template.name.trim().is_empty() || template.language.trim().is_empty() {
                bad("fallback.template", "needs a name and a language".into());
            }
        }
        if let DeskConfig::Salesiq { department_id, .. } = &self.desk {
            if self.salesiq.is_none() {
                bad("desk", "kind = \"salesiq\" needs a [salesiq] section with the account".into());
            }
            if department_id.trim().is_empty() {
                bad("desk.department_id", "must not be empty".into());
            }
        }
        if matches!(self.desk, DeskConfig::Intercom { .. }) && self.intercom.is_none() {
            bad("desk", "kind = \"intercom\" needs an [intercom] section with the workspace".into());
        }
        if matches!(self.desk, DeskConfig::Livechat { .. }) && self.livechat.is_none() {
            bad("desk", "kind = \"livechat\" needs a [livechat] section with the account".into());
        }
        if let Some(w) = &self.channels.whatsapp {
            if w.phone_number_id.trim().is_empty() || !w.phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
                bad("channels.whatsapp.phone_number_id", "must be the numeric phone number id".into());
            }
        }
        if let Some(i) = &self.intercom {
            if i.bot_admin_id.trim().is_empty() {
                bad("intercom.bot_admin_id", "must not be empty".into());
            }
        }
        if let Some(l) = &self.livechat {
            if l.bot_agent_id.is_some() != l.bot_secret.is_some() {
                bad("livechat.bot_secret", "bot_agent_id and bot_secret go together".into());
            }
        }
        if let Some(t) = &self.channels.telegram {
            let s = t.secret_token.expose();
            let ok = is_ssm_reference(&t.secret_token)
                || (!s.is_empty()
                    && s.len() <= 256
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            if !ok {
                bad("channels.telegram.secret_token", "must be 1-256 characters of A-Z, a-z, 0-9, '_' or '-'".into());
            }
        }
        if let Some(z) = &self.salesiq {
            for (path, v) in [
                ("salesiq.screen_name", &z.screen_name),
                ("salesiq.app_id", &z.app_id),
                ("salesiq.client_id", &z.client_id),
            ] {
                if v.trim().is_empty() || v.contains('/') {
                    bad(path, "must not be empty or contain '/'".into());
                }
            }
            if z.webhook_public_keys.is_empty() {
                bad(
                    "salesiq.webhook_public_keys",
                    "needs at least one public key from \"Secure your webhook\"; unsigned webhooks are refused".into(),
                );
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
            actions: Default::default(),
            api: None,
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
            channels: ChannelsConfig::default(),
            salesiq: None,
            intercom: None,
            livechat: None,
        }
    }

    #[test]
    fn default_agent_is_valid() {
        assert_eq!(agent().validate(), vec![]);
    }

    #[test]
    fn llm_brain_problems_name_the_field_and_its_key_is_a_secret() {
        let mut a = agent();
        a.brain = BrainConfig::Llm(Box::new(LlmConfig {
            base_url: "api.openai.com/v1".into(),
            model: " ".into(),
            api_key: Secret("sk-x".into()),
            system_prompt: String::new(),
            handoff_description: default_handoff_description(),
            knowledge: vec![FaqEntry { question: "q".into(), answer: " ".into(), keywords: vec![] }],
            max_tokens: 0,
            temperature: Some(3.0),
            conversation_token_budget: 1,
            daily_token_budget: 1,
            timeout_secs: 120,
            erp: None,
        }));
        let paths: Vec<_> = a.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "brain.base_url",
                "brain.model",
                "brain.max_tokens",
                "brain.temperature",
                "brain.timeout_secs",
                "brain.knowledge[0].answer"
            ]
        );
        assert!(a.secrets_mut().iter().any(|(field, s)| *field == "brain.api_key" && s.expose() == "sk-x"));
        // The TOML/JSON form: `kind = "llm"` with the fields beside it.
        let parsed: BrainConfig = serde_json::from_value(serde_json::json!({
            "kind": "llm", "base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini", "api_key": "env:KEY"
        }))
        .unwrap();
        assert!(matches!(parsed, BrainConfig::Llm(ref l) if l.max_tokens == 500 && l.timeout_secs == 30));
    }

    #[test]
    fn email_and_whatsapp_fallback_problems_name_the_field() {
        let mut a = agent();
        a.fallback = FallbackConfig::Email {
            smtp_url: Some(Secret("http://smtp.example.com".into())),
            capture_dir: None,
            from: "not-an-address".into(),
            to: vec!["ok@example.com".into(), "nope".into()],
        };
        let paths: Vec<_> = a.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["fallback.smtp_url", "fallback.from", "fallback.to[1]"]);
        a.fallback =
            FallbackConfig::Email { smtp_url: None, capture_dir: None, from: "b@example.com".into(), to: vec![] };
        let paths: Vec<_> = a.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["fallback.smtp_url", "fallback.to"]);
        a.fallback = FallbackConfig::Whatsapp {
            to: "12ab".into(),
            template: WhatsappTemplate { name: "lead".into(), language: String::new() },
        };
        let paths: Vec<_> = a.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["fallback", "fallback.to", "fallback.template"]);
    }

    fn action(name: &str) -> ActionConfig {
        ActionConfig {
            name: name.into(),
            description: "Look the customer up.".into(),
            inputs: vec!["phone".into()],
            url: "https://erp.example.com/actions/customer".into(),
            signing_secret: None,
            outputs: [("customer_id".to_string(), "/customer/id".to_string())].into(),
            timeout_secs: 10,
            retries: 2,
            sanitize: Vec::new(),
            format: Default::default(),
        }
    }

    #[test]
    fn action_problems_name_the_field() {
        let mut a = agent();
        a.actions = vec![action("lookup_customer")];
        assert!(a.validate().is_empty(), "{:?}", a.validate());
        let mut broken = action("Lookup Customer");
        broken.url = "erp.example.com".into();
        broken.outputs.insert("tier".into(), "customer.tier".into());
        broken.timeout_secs = 60;
        broken.retries = 9;
        broken.signing_secret = Some(Secret("plain".into()));
        a.actions = vec![action("handoff"), action("x"), action("x"), broken];
        let paths: Vec<_> = a.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "actions[3].url",
                "actions[0].name",
                "actions[2].name",
                "actions[3].name",
                "actions[3].signing_secret",
                "actions[3].outputs.tier",
                "actions[3].timeout_secs",
                "actions[3].retries"
            ]
        );
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
    #[test]
    fn endpoints_on_private_addresses_are_named_with_their_field() {
        let mut a = agent();
        assert!(a.non_public_targets().is_empty());
        a.desk = DeskConfig::Webhook {
            url: "http://169.254.169.254/latest".into(),
            username: None,
            password: None,
            signing_secret: None,
        };
        a.fallback = FallbackConfig::Ticket { url: "https://tickets.example.com/new".into(), signing_secret: None };
        let mut erp = action("lookup");
        erp.url = "http://[::1]:9001/2018-06-01/runtime/invocation/next".into();
        a.actions = vec![action("orders"), erp];
        let found: Vec<_> = a.non_public_targets().into_iter().map(|p| (p.path, p.message)).collect();
        assert_eq!(
            found,
            [
                ("desk.url".to_string(), "points at 169.254.169.254, a loopback, private or link-local address".into()),
                ("actions[1].url".to_string(), "points at ::1, a loopback, private or link-local address".into()),
            ]
        );
        // The scheme check covers the same list of fields.
        let urls: Vec<_> = a.outbound_urls().into_iter().map(|(p, _)| p).collect();
        assert_eq!(urls, ["desk.url", "fallback.url", "actions[0].url", "actions[1].url"]);
    }
    #[test]
    fn retention_is_between_a_day_and_ten_years_and_counts_from_the_event() {
        let mut a = agent();
        assert_eq!(a.policy.retention_days, 30);
        assert_eq!(a.policy.keep_until(crate::Millis(1_000)), crate::Millis(1_000 + 30 * 86_400_000));
        for (days, ok) in [(0, false), (1, true), (3650, true), (3651, false)] {
            a.policy.retention_days = days;
            let paths: Vec<_> = a.validate().into_iter().map(|p| p.path).collect();
            assert_eq!(paths.is_empty(), ok, "{days}: {paths:?}");
        }
    }
}
