//! [`LlmBrain`]: the [`Brain`] behind `brain.kind = "llm"`, for any OpenAI-compatible
//! chat-completions endpoint.
//!
//! One answer is one `POST {base_url}/chat/completions` (`stream: false`) with the agent's
//! system prompt, the most relevant knowledge entries (BM25 over `brain.knowledge`), the
//! recent turns and the question, and one tool: `handoff(reason)`, described by the agent's
//! `handoff_description`. A `handoff` call becomes [`BrainReply::Handoff`] with the model's
//! reason for the desk; a call of a tool the hub does not offer is answered as an error and
//! the model asked again, at most [`MAX_TOOL_ROUNDS`] times.
//!
//! Wire format (OpenAI's Chat Completions reference, followed by the compatible servers):
//! request `{model, messages:[{role: system|user|assistant|tool, content, tool_calls?,
//! tool_call_id?}], tools:[{type:"function", function:{name, description, parameters}}],
//! tool_choice:"auto", max_tokens, temperature?, stream:false}`; answer `{choices:[{message:
//! {role:"assistant", content|null, tool_calls?:[{id, type:"function", function:{name,
//! arguments (a JSON string)}}]}, finish_reason: stop|length|tool_calls|content_filter}],
//! usage:{prompt_tokens, completion_tokens, total_tokens}}`; errors `{error:{message, type,
//! param, code}}` with 401 (key), 429 (rate limit or quota; `Retry-After` when given), 5xx.
//!
//! With `brain.erp` configured the model also gets the ERP tools of the order assistant
//! (seeds 000/001): `identify_caller`, `search_products`, `prepare_order`, `change_order`,
//! `cancel_order` and `commit_order`, run here against the middleware of
//! `docs/erp-openapi.yaml`. A commit the ERP does not confirm is never passed to the model as
//! a success: an unknown outcome hands the user to a human at once.
//!
//! Budgets: the tokens each answer reports (`usage.total_tokens`) are added to a counter per
//! conversation and one per agent and UTC day in the `KeyValue` store. Once either budget is
//! used up the brain hands the user to a human instead of calling the model. Events of one
//! conversation are applied one at a time, so its counter is exact; the daily counter may be
//! short by the answers of conversations that finish at the same moment.

use crate::faq::FaqBrain;
use async_trait::async_trait;
use baton_connectors::erp::{CommitOutcome, ErpClient};
use baton_core::agent::{ActionConfig, Agent, BrainConfig, ErpExtra, FaqEntry, LlmConfig};
use baton_core::event::BrainReply;
use baton_core::model::{Millis, Role};
use baton_core::ports::{Brain, BrainAnswer, BrainRequest, Clock, DeliveryError, KeyValue};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Rounds of tool calls answered before the brain gives up on a turn (an order takes three:
/// identify, search, prepare).
pub const MAX_TOOL_ROUNDS: usize = 6;
/// An action's answer is passed to the model up to this many characters.
const MAX_ACTION_ANSWER_CHARS: usize = 8000;
/// Knowledge entries given with each question.
pub const KNOWLEDGE_ENTRIES: usize = 3;
/// Answers are read up to this size.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
const DAY_MS: i64 = 86_400_000;
/// Each ERP call; an order takes a few, all inside one worker invocation.
const ERP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a conversation's counter is kept after its last answer.
const CONVERSATION_COUNTER_MS: i64 = 30 * DAY_MS;

pub struct LlmBrain {
    http: reqwest::Client,
    erp: ErpClient,
    /// The knowledge indexes, built once per agent and content (the FAQ brain's cache).
    knowledge: FaqBrain,
    kv: Arc<dyn KeyValue>,
    clock: Arc<dyn Clock>,
}

fn conversation_counter(request: &BrainRequest) -> String {
    format!("llm-tokens:{}", request.conversation)
}

fn daily_counter(agent: &str, now: Millis) -> String {
    format!("llm-tokens-day:{agent}:{}", now.0.div_euclid(DAY_MS))
}

fn speaker(role: Role) -> Option<&'static str> {
    match role {
        Role::User => Some("user"),
        Role::Bot => Some("assistant"),
        // The model should know a human colleague said it, not itself.
        Role::Human => Some("user"),
        Role::System => None,
    }
}

/// The `messages` of one request.
pub fn messages(cfg: &LlmConfig, request: &BrainRequest, knowledge: &[&FaqEntry]) -> Vec<Value> {
    let mut system = cfg.system_prompt.trim().to_string();
    if !knowledge.is_empty() {
        system.push_str("\n\nUse these entries of the company's knowledge base when they answer the question:");
        for e in knowledge {
            system.push_str(&format!("\n- Q: {}\n  A: {}", e.question.trim(), e.answer.trim()));
        }
    }
    if !request.params.is_empty() {
        system.push_str("\n\nKnown about the user:");
        for (k, v) in &request.params {
            system.push_str(&format!("\n- {k}: {v}"));
        }
    }
    if let Some(summary) = request.context.as_deref().filter(|c| !c.trim().is_empty()) {
        system.push_str(&format!("\n\nEarlier in this conversation: {summary}"));
    }
    system.push_str(&format!("\n\nAnswer in the user's language (their setting: {}).", request.language));
    let mut out = vec![json!({"role": "system", "content": system.trim()})];
    // The history ends with the question itself; it is sent once, last.
    let history = match request.history.last() {
        Some(t) if t.role == Role::User && t.text == request.question => &request.history[..request.history.len() - 1],
        _ => &request.history[..],
    };
    for turn in history {
        if let Some(role) = speaker(turn.role) {
            let content = if turn.role == Role::Human {
                format!("[a human colleague wrote] {}", turn.text)
            } else {
                turn.text.clone()
            };
            out.push(json!({"role": role, "content": content}));
        }
    }
    out.push(json!({"role": "user", "content": request.question}));
    out
}

fn function(name: &str, description: &str, parameters: Value) -> Value {
    json!({"type": "function", "function": {"name": name, "description": description, "parameters": parameters}})
}

fn tools(cfg: &LlmConfig, actions: &[ActionConfig]) -> Value {
    let reason = json!({"type": "object", "properties": {"reason": {"type": "string",
        "description": "Why a human should take over, for the colleague who will."}}, "required": ["reason"]});
    let mut tools = vec![function("handoff", &cfg.handoff_description, reason)];
    if cfg.erp.is_some() {
        let lines = json!({"type": "array", "minItems": 1, "items": {"type": "object",
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
            "required": ["sku", "quantity"]}});
        tools.extend([
            function("identify_caller", "Find the customer by phone number. On WhatsApp and phone calls the number is known: call it without arguments.",
                json!({"type": "object", "properties": {"phone": {"type": "string", "description": "E.164, e.g. +385911234567"}}})),
            function("search_products", "Search the catalogue; answers products with SKU, price and stock.",
                json!({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]})),
            function("prepare_order", "Prepare an order for an identified customer. Nothing is booked: read the prepared order and its total back to the user and ask them to confirm.",
                json!({"type": "object", "properties": {"contact_id": {"type": "string"}, "lines": lines, "note": {"type": "string"}}, "required": ["contact_id", "lines"]})),
            function("change_order", "Prepare new lines for an existing order; confirm with the user, then commit.",
                json!({"type": "object", "properties": {"order_id": {"type": "string"}, "lines": lines}, "required": ["order_id", "lines"]})),
            function("cancel_order", "Prepare the cancellation of an order; confirm with the user, then commit.",
                json!({"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]})),
            function("commit_order", "Book a prepared transaction. Only after the user has explicitly confirmed it. Tell the user it is placed only if this answers status committed.",
                json!({"type": "object", "properties": {"transaction_id": {"type": "string"}}, "required": ["transaction_id"]})),
        ]);
    }
    let object = |properties: Value, required: &[&str]| json!({"type": "object", "properties": properties, "required": required});
    let order_id = json!({"order_id": {"type": "string"}});
    let contact_id = json!({"contact_id": {"type": "string", "description": "the identified customer's id"}});
    for extra in cfg.erp.iter().flat_map(|e| e.extras.iter()) {
        tools.push(match extra {
            ErpExtra::TopProducts => function("top_products", "The products this customer orders most, e.g. to suggest a reorder.", object(contact_id.clone(), &[])),
            ErpExtra::Reorder => function("reorder", "Prepare a past order again. Nothing is booked: read it back, ask the user to confirm, then commit_order.", object(order_id.clone(), &["order_id"])),
            ErpExtra::OrderStatus => function("order_status", "The status and delivery estimate of an order.", object(order_id.clone(), &["order_id"])),
            ErpExtra::Complaints => function("complaint_status", "The customer's complaints and where each stands.", object(contact_id.clone(), &[])),
            ErpExtra::Promotions => function("current_promotions", "The promotions running now.", object(json!({}), &[])),
        });
    }
    for a in actions {
        let properties: serde_json::Map<String, Value> = a
            .inputs
            .iter()
            .map(|i| (i.clone(), json!({"type": "string", "description": "taken from the session when known"})))
            .collect();
        tools.push(function(&a.name, &a.description, json!({"type": "object", "properties": properties})));
    }
    Value::Array(tools)
}

/// One tool call of a completion.
struct Call {
    id: String,
    name: String,
    arguments: Value,
}

/// What one completion asks for.
enum Step {
    Say(String),
    /// Tool calls (with the assistant message to send back, and any text it also wrote).
    Calls {
        assistant: Value,
        content: Option<String>,
        calls: Vec<Call>,
    },
    Nothing,
}

fn step(answer: &Value) -> Result<Step, DeliveryError> {
    let Some(message) = answer.pointer("/choices/0/message") else {
        return Err(DeliveryError::permanent("the model answered without choices[0].message"));
    };
    let content = message.get("content").and_then(Value::as_str).map(str::trim).filter(|c| !c.is_empty());
    let calls: Vec<Call> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| Call {
            id: c.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
            name: c.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().to_string(),
            // Arguments arrive as a JSON string; unreadable ones become an empty object.
            arguments: c
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_else(|| json!({})),
        })
        .collect();
    if !calls.is_empty() {
        return Ok(Step::Calls { assistant: message.clone(), content: content.map(str::to_string), calls });
    }
    Ok(match content {
        Some(text) => Step::Say(text.to_string()),
        None => Step::Nothing,
    })
}

/// What a tool call comes to.
enum ToolResult {
    /// Sent back to the model as the tool's answer.
    Answer(Value),
    /// Stop and hand the user over.
    Handoff(String),
}

/// Whether the ERP offers the extra behind tool `name`.
fn offers(erp: &baton_core::agent::ErpConfig, name: &str) -> bool {
    let extra = match name {
        "top_products" => ErpExtra::TopProducts,
        "reorder" => ErpExtra::Reorder,
        "order_status" => ErpExtra::OrderStatus,
        "complaint_status" => ErpExtra::Complaints,
        "current_promotions" => ErpExtra::Promotions,
        _ => return false,
    };
    erp.extras.contains(&extra)
}

/// A short stable key for an ERP write: the conversation and the call's arguments.
fn write_key(kind: &str, request: &BrainRequest, arguments: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    request.conversation.to_string().hash(&mut h);
    arguments.to_string().hash(&mut h);
    format!("{kind}-{:016x}", h.finish())
}

/// Map a refusal to what retrying can do: 401/403 credentials, 408/409/429/5xx later, the
/// rest never. The provider's message is quoted (bounded); the key is never in it.
fn refusal(status: u16, retry_after: Option<&str>, body: &[u8], key: &str) -> DeliveryError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail: String = json
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    let mut message = format!("the model endpoint answered HTTP {status}: {detail}");
    if key.len() >= 6 {
        message = message.replace(key, "***");
    }
    match status {
        401 | 403 => DeliveryError::Unauthorized { message },
        408 | 409 | 429 | 500..=599 => DeliveryError::Retryable {
            message,
            retry_after_ms: retry_after.and_then(|v| v.trim().parse::<u64>().ok()).map(|s| s.min(300) * 1000),
        },
        _ => DeliveryError::permanent(message),
    }
}

impl LlmBrain {
    pub fn new(http: reqwest::Client, kv: Arc<dyn KeyValue>, clock: Arc<dyn Clock>) -> Self {
        let erp = ErpClient::from_client(http.clone(), ERP_TIMEOUT);
        LlmBrain { http, erp, knowledge: FaqBrain::new(), kv, clock }
    }

    async fn used(&self, name: &str, now: Millis) -> Result<u64, DeliveryError> {
        let value = self.kv.get(name, now).await.map_err(|e| DeliveryError::retryable(e.to_string()))?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Add `tokens` to a counter (a failure to count is logged, not a failed answer).
    async fn count(&self, name: &str, tokens: u64, now: Millis, keep_ms: i64) {
        let total = self.used(name, now).await.unwrap_or(0).saturating_add(tokens);
        if let Err(e) = self.kv.put(name, &total.to_string(), Millis(now.0 + keep_ms)).await {
            tracing::warn!(counter = name, error = %e, "a token counter could not be updated");
        }
    }

    /// Which budget is used up, if one is.
    async fn over_budget(
        &self,
        agent: &Agent,
        cfg: &LlmConfig,
        request: &BrainRequest,
    ) -> Result<Option<&'static str>, DeliveryError> {
        let now = self.clock.now();
        if self.used(&conversation_counter(request), now).await? >= cfg.conversation_token_budget {
            return Ok(Some("the assistant's token budget for this conversation is used up"));
        }
        if self.used(&daily_counter(&agent.id, now), now).await? >= cfg.daily_token_budget {
            return Ok(Some("the assistant's token budget for today is used up"));
        }
        Ok(None)
    }

    async fn complete(
        &self,
        cfg: &LlmConfig,
        actions: &[ActionConfig],
        messages: &[Value],
    ) -> Result<(Value, u64), DeliveryError> {
        let base = cfg.base_url.trim().trim_end_matches('/');
        let mut body = json!({
            "model": cfg.model,
            "messages": messages,
            "tools": tools(cfg, actions),
            "tool_choice": "auto",
            "max_tokens": cfg.max_tokens,
            "stream": false,
        });
        if let Some(t) = cfg.temperature {
            body["temperature"] = json!(t);
        }
        let timeout = Duration::from_secs(cfg.timeout_secs.clamp(1, 50));
        let key = cfg.api_key.expose();
        let resp = self
            .http
            .post(format!("{base}/chat/completions"))
            .timeout(timeout)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    DeliveryError::retryable(format!("the model did not answer within {} s", timeout.as_secs()))
                } else {
                    DeliveryError::retryable(format!("the model endpoint cannot be reached: {}", e.without_url()))
                }
            })?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| DeliveryError::retryable(format!("reading the model's answer: {}", e.without_url())))?;
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err(DeliveryError::permanent("the model's answer is larger than 1 MiB"));
        }
        if !(200..300).contains(&status) {
            return Err(refusal(status, retry_after.as_deref(), &bytes, key));
        }
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| DeliveryError::permanent(format!("the model's answer is not JSON: {e}")))?;
        let tokens = answer.pointer("/usage/total_tokens").and_then(Value::as_u64).unwrap_or(0);
        Ok((answer, tokens))
    }

    /// The reply to `request`, and the session parameters its tools learned.
    pub async fn reply(
        &self,
        agent: &Agent,
        cfg: &LlmConfig,
        request: &BrainRequest,
    ) -> Result<BrainAnswer, DeliveryError> {
        let mut learned = BTreeMap::new();
        let reply = self.reply_learning(agent, cfg, request, &mut learned).await?;
        Ok(BrainAnswer { reply, params: learned })
    }

    async fn reply_learning(
        &self,
        agent: &Agent,
        cfg: &LlmConfig,
        request: &BrainRequest,
        learned: &mut BTreeMap<String, String>,
    ) -> Result<BrainReply, DeliveryError> {
        if let Some(why) = self.over_budget(agent, cfg, request).await? {
            return Ok(BrainReply::Handoff { reason: why.into(), text: None });
        }
        let index = self.knowledge.index_for(&agent.id, &cfg.knowledge);
        let knowledge: Vec<&FaqEntry> = index
            .ranked(&request.question)
            .into_iter()
            .take(KNOWLEDGE_ENTRIES)
            .filter_map(|(i, _)| cfg.knowledge.get(i))
            .collect();
        let mut messages = messages(cfg, request, &knowledge);
        for _ in 0..=MAX_TOOL_ROUNDS {
            let (answer, tokens) = self.complete(cfg, &agent.actions, &messages).await?;
            let now = self.clock.now();
            self.count(&conversation_counter(request), tokens, now, CONVERSATION_COUNTER_MS).await;
            self.count(&daily_counter(&agent.id, now), tokens, now, 2 * DAY_MS).await;
            match step(&answer)? {
                Step::Say(text) => return Ok(BrainReply::Answer { text, buttons: Vec::new() }),
                Step::Nothing => return Ok(BrainReply::Unknown { text: None }),
                Step::Calls { assistant, content, calls } => {
                    if let Some(handoff) = calls.iter().find(|c| c.name == "handoff") {
                        let reason = handoff
                            .arguments
                            .get("reason")
                            .and_then(Value::as_str)
                            .map(str::trim)
                            .filter(|r| !r.is_empty())
                            .unwrap_or("the assistant handed the conversation over")
                            .to_string();
                        return Ok(BrainReply::Handoff { reason, text: content });
                    }
                    messages.push(assistant);
                    for call in calls {
                        match self.run_tool(agent, cfg, request, &call, learned).await {
                            ToolResult::Answer(answer) => messages
                                .push(json!({"role": "tool", "tool_call_id": call.id, "content": answer.to_string()})),
                            ToolResult::Handoff(reason) => return Ok(BrainReply::Handoff { reason, text: None }),
                        }
                    }
                }
            }
        }
        Ok(BrainReply::Handoff {
            reason: format!("the assistant kept calling tools it does not have ({MAX_TOOL_ROUNDS} rounds)"),
            text: None,
        })
    }
}

impl LlmBrain {
    /// Run one tool call. ERP refusals go back to the model (it tells the user); a commit
    /// whose outcome nobody knows hands the user over.
    async fn run_tool(
        &self,
        agent: &Agent,
        cfg: &LlmConfig,
        request: &BrainRequest,
        call: &Call,
        learned: &mut BTreeMap<String, String>,
    ) -> ToolResult {
        if let Some(action) = agent.actions.iter().find(|a| a.name == call.name) {
            return ToolResult::Answer(self.run_action(action, request, &call.arguments, learned).await);
        }
        let Some(erp) = cfg.erp.as_ref() else {
            return ToolResult::Answer(
                json!({"error": format!("There is no tool named {:?}; answer the user or call handoff.", call.name)}),
            );
        };
        let args = &call.arguments;
        let text = |k: &str| args.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        let result = match call.name.as_str() {
            "identify_caller" => {
                // The number the channel knows (WhatsApp, a voice call's session parameter).
                let known = request.params.get("phone").cloned();
                match text("phone").map(str::to_string).or(known) {
                    Some(phone) => {
                        let found = self.erp.contacts_by_phone(erp, &phone).await;
                        if let Ok(contact) = found.as_ref().map(|f| &f["contacts"][0]) {
                            let fields = [
                                ("contact_id", "id"),
                                ("customer_name", "name"),
                                ("customer_number", "customer_number"),
                            ];
                            for (param, field) in fields {
                                if let Some(v) = contact.get(field).and_then(Value::as_str) {
                                    learned.insert(param.into(), v.into());
                                }
                            }
                        }
                        found
                    }
                    None => {
                        return ToolResult::Answer(json!({"error": "No phone number is known: ask the user for it."}))
                    }
                }
            }
            "search_products" => match text("query") {
                Some(q) => self.erp.search_products(erp, q, 10).await,
                None => return ToolResult::Answer(json!({"error": "query is required"})),
            },
            "prepare_order" => {
                // The identified customer when the model leaves the id out.
                let contact = text("contact_id")
                    .map(str::to_string)
                    .or_else(|| learned.get("contact_id").or(request.params.get("contact_id")).cloned());
                let order = json!({"contact_id": contact, "lines": args.get("lines"), "note": args.get("note")});
                self.erp.prepare_order(erp, &order, &write_key("prepare", request, args)).await
            }
            "change_order" | "cancel_order" => match text("order_id") {
                Some(id) => {
                    let change = if call.name == "cancel_order" {
                        json!({"status": "cancelled"})
                    } else {
                        json!({"lines": args.get("lines")})
                    };
                    self.erp.change_order(erp, id, &change, &write_key(&call.name, request, args)).await
                }
                None => return ToolResult::Answer(json!({"error": "order_id is required"})),
            },
            "commit_order" => {
                let Some(tx) = text("transaction_id") else {
                    return ToolResult::Answer(json!({"error": "transaction_id is required"}));
                };
                return match self.erp.commit(erp, tx).await {
                    CommitOutcome::Committed { order_id } => {
                        learned.insert("last_order_id".into(), order_id.clone());
                        ToolResult::Answer(json!({"status": "committed", "order_id": order_id}))
                    }
                    CommitOutcome::Failed { reason } => ToolResult::Answer(json!({"status": "not_committed",
                        "reason": reason, "instruction": "Tell the user the order was NOT placed."})),
                    CommitOutcome::Unknown { reason } => ToolResult::Handoff(format!(
                        "the ERP did not confirm transaction {tx} ({reason}); the user was not told it is placed"
                    )),
                };
            }
            "top_products" | "complaint_status" | "reorder" | "order_status" | "current_promotions"
                if offers(erp, &call.name) =>
            {
                let contact = text("contact_id")
                    .map(str::to_string)
                    .or_else(|| learned.get("contact_id").or(request.params.get("contact_id")).cloned());
                match (call.name.as_str(), contact, text("order_id")) {
                    ("current_promotions", _, _) => self.erp.promotions(erp).await,
                    ("top_products", Some(c), _) => self.erp.top_products(erp, &c).await,
                    ("complaint_status", Some(c), _) => self.erp.complaints(erp, &c).await,
                    ("order_status", _, Some(id)) => self.erp.order(erp, id).await,
                    ("reorder", _, Some(id)) => self.erp.reorder(erp, id, &write_key("reorder", request, args)).await,
                    ("top_products" | "complaint_status", None, _) => {
                        return ToolResult::Answer(json!({"error": "identify the customer first (identify_caller)"}))
                    }
                    _ => return ToolResult::Answer(json!({"error": "order_id is required"})),
                }
            }
            other => {
                return ToolResult::Answer(
                    json!({"error": format!("There is no tool named {other:?}; answer the user or call handoff.")}),
                )
            }
        };
        match result {
            Ok(answer) => ToolResult::Answer(answer),
            Err(e) => ToolResult::Answer(json!({"error": e.to_string()})),
        }
    }
}

impl LlmBrain {
    /// Run an action (see [`crate::actions`]) with inputs from the model or the session; its
    /// outputs become session parameters. What the model gets back is the answer, or the error.
    async fn run_action(
        &self,
        action: &ActionConfig,
        request: &BrainRequest,
        arguments: &Value,
        learned: &mut BTreeMap<String, String>,
    ) -> Value {
        let mut inputs = serde_json::Map::new();
        for key in &action.inputs {
            let given = arguments.get(key).and_then(Value::as_str).map(str::trim).filter(|v| !v.is_empty());
            let known = learned.get(key).or(request.params.get(key)).map(String::as_str);
            match given.or(known) {
                Some(v) => inputs.insert(key.clone(), json!(v)),
                None => return json!({"error": format!("{key} is not known yet: ask the user for it")}),
            };
        }
        match baton_connectors::actions::call(&self.http, action, &request.conversation, Value::Object(inputs)).await {
            Ok(result) => {
                learned.extend(result.outputs);
                // The model gets the answer, bounded.
                let text = result.answer.to_string();
                if text.len() > MAX_ACTION_ANSWER_CHARS {
                    return json!({"answer_cut_to_fit": text.chars().take(MAX_ACTION_ANSWER_CHARS).collect::<String>()});
                }
                result.answer
            }
            Err(e) => json!({"error": e}),
        }
    }
}

#[async_trait]
impl Brain for LlmBrain {
    async fn answer(&self, agent: &Agent, request: &BrainRequest) -> Result<BrainReply, DeliveryError> {
        Ok(self.answer_with_params(agent, request).await?.reply)
    }

    async fn answer_with_params(&self, agent: &Agent, request: &BrainRequest) -> Result<BrainAnswer, DeliveryError> {
        match &agent.brain {
            BrainConfig::Llm(cfg) => self.reply(agent, cfg, request).await,
            BrainConfig::Faq { .. } | BrainConfig::Hosted(_) => {
                Err(DeliveryError::permanent(format!("agent {} does not use an LLM brain", agent.id)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::model::Turn;
    use baton_core::{Channel, ConversationKey};

    fn cfg() -> LlmConfig {
        LlmConfig {
            base_url: "https://llm.example.com/v1".into(),
            model: "m".into(),
            api_key: baton_core::model::Secret("sk-test-key-123".into()),
            system_prompt: "You are the shop's assistant.".into(),
            handoff_description: "Hand over when asked.".into(),
            knowledge: vec![],
            max_tokens: 100,
            temperature: None,
            conversation_token_budget: 1000,
            daily_token_budget: 10_000,
            timeout_secs: 5,
            erp: None,
        }
    }

    #[test]
    fn the_question_is_sent_once_after_the_history_and_humans_are_marked() {
        let key = ConversationKey::new("shop", Channel::Widget, "u1").unwrap();
        let turn = |role, text: &str| Turn { role, text: text.into(), at: Millis(1) };
        let request = BrainRequest {
            params: Default::default(),
            conversation: key,
            question: "where is it?".into(),
            history: vec![
                turn(Role::User, "hi"),
                turn(Role::Bot, "Hello!"),
                turn(Role::Human, "Anna here"),
                turn(Role::System, "internal"),
                turn(Role::User, "where is it?"),
            ],
            context: None,
            language: "de".into(),
        };
        let entry = FaqEntry { question: "Shipping?".into(), answer: "2-4 days".into(), keywords: vec![] };
        let m = messages(&cfg(), &request, &[&entry]);
        let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user", "user"]);
        assert_eq!(m[3]["content"], "[a human colleague wrote] Anna here");
        assert_eq!(m[4]["content"], "where is it?");
        let system = m[0]["content"].as_str().unwrap();
        assert!(system.starts_with("You are the shop's assistant."));
        assert!(system.contains("Q: Shipping?\n  A: 2-4 days") && system.contains("(their setting: de)"), "{system}");
    }

    #[test]
    fn refusals_map_to_what_retrying_can_do_and_never_show_the_key() {
        let body =
            br#"{"error":{"message":"Incorrect API key provided: sk-test-key-123","type":"invalid_request_error"}}"#;
        let e = refusal(401, None, body, "sk-test-key-123");
        assert!(matches!(e, DeliveryError::Unauthorized { .. }) && !e.to_string().contains("sk-test"), "{e}");
        assert_eq!(
            refusal(429, Some("7"), b"{}", "k"),
            DeliveryError::Retryable {
                message: "the model endpoint answered HTTP 429: ".into(),
                retry_after_ms: Some(7000)
            }
        );
        assert!(matches!(refusal(503, None, b"", "k"), DeliveryError::Retryable { .. }));
        assert!(matches!(refusal(400, None, b"{}", "k"), DeliveryError::Permanent { .. }));
    }

    #[test]
    fn tool_calls_are_read_with_their_arguments() {
        let answer = json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "handoff", "arguments": "{\"reason\":\"wants a refund\"}"}}]},
            "finish_reason": "tool_calls"}]});
        let Step::Calls { calls, content: None, .. } = step(&answer).unwrap() else { panic!("calls expected") };
        assert_eq!((calls[0].id.as_str(), calls[0].name.as_str()), ("call_1", "handoff"));
        assert_eq!(calls[0].arguments["reason"], "wants a refund");
        let bad_args = json!({"choices": [{"message": {"tool_calls": [{"id": "c", "function": {"name": "handoff", "arguments": "not json"}}]}}]});
        assert!(matches!(step(&bad_args).unwrap(), Step::Calls { ref calls, .. } if calls[0].arguments == json!({})));
        assert!(step(&json!({"choices": []})).is_err());
    }
}
