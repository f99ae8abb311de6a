//! A fake OpenAI-compatible chat-completions server: `POST /v1/chat/completions` with
//! `Authorization: Bearer {key}`. It checks what the real API refuses (a JSON body with
//! `model` and a non-empty `messages` array of `{role, content}`; `stream` must not be true;
//! `tool` messages must answer a `tool_call_id` of the previous assistant message) and answers
//! scripted turns in the real response schema: `{id, object: "chat.completion", created,
//! model, choices: [{index, message: {role: "assistant", content, tool_calls?}, finish_reason}],
//! usage: {prompt_tokens, completion_tokens, total_tokens}}`, with `finish_reason` `stop` or
//! `tool_calls` and tool-call arguments as a JSON string. Errors use the real error body
//! `{error: {message, type, param, code}}`; 429 carries `Retry-After`. Every request is
//! recorded in order.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Turn {
    /// `finish_reason: "stop"` with this content.
    Text(String),
    /// `finish_reason: "tool_calls"`: one call of `name` with these arguments (and optional content).
    ToolCall { name: String, arguments: Value, content: Option<String> },
    /// An error status with the API's error body.
    Error { status: u16, kind: String, message: String },
}

impl Turn {
    pub fn text(t: &str) -> Turn {
        Turn::Text(t.into())
    }
    pub fn tool(name: &str, arguments: Value) -> Turn {
        Turn::ToolCall { name: name.into(), arguments, content: None }
    }
    pub fn error(status: u16, kind: &str, message: &str) -> Turn {
        Turn::Error { status, kind: kind.into(), message: message.into() }
    }
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub at: Instant,
    pub body: Value,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct Log {
    requests: Vec<ChatRequest>,
    script: VecDeque<Turn>,
    /// When the script is empty.
    fallback: Option<Turn>,
    /// Tokens each answer reports using.
    tokens_per_answer: u64,
    next: u64,
}

#[derive(Clone)]
struct St {
    key: Arc<str>,
    log: Arc<Mutex<Log>>,
}

pub struct FakeOpenai {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl FakeOpenai {
    /// Start on a free loopback port, accepting `api_key` only. Unscripted requests get
    /// "I don't know." and every answer reports 100 tokens.
    pub async fn start(api_key: &str) -> FakeOpenai {
        let log = Arc::new(Mutex::new(Log { tokens_per_answer: 100, ..Log::default() }));
        let app = Router::new().fallback(handle).with_state(St { key: api_key.into(), log: log.clone() });
        let addr = crate::serve_on_loopback(app).await;
        FakeOpenai { addr, log }
    }

    /// The `base_url` to configure (`.../v1`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Answer the next requests with these turns, in order.
    pub fn script(&self, turns: impl IntoIterator<Item = Turn>) {
        self.log.lock().unwrap().script.extend(turns);
    }

    /// Answer every request with `turn` once the script is used up.
    pub fn always(&self, turn: Turn) {
        self.log.lock().unwrap().fallback = Some(turn);
    }

    pub fn tokens_per_answer(&self, n: u64) {
        self.log.lock().unwrap().tokens_per_answer = n;
    }

    pub fn requests(&self) -> Vec<ChatRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Wait until `n` requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ChatRequest> {
        let start = Instant::now();
        loop {
            let r = self.requests();
            if r.len() >= n {
                return r;
            }
            assert!(start.elapsed() < timeout, "timed out waiting for {n} chat requests; {} arrived", r.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn error(status: u16, kind: &str, message: &str, code: Option<&str>) -> (u16, Value) {
    (status, json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

/// What the real API refuses, as `(status, body)`.
fn check(body: &Value) -> Result<(), (u16, Value)> {
    let bad = |m: &str| error(400, "invalid_request_error", m, None);
    let Some(obj) = body.as_object() else { return Err(bad("We could not parse the JSON body of your request.")) };
    if obj.get("model").and_then(Value::as_str).is_none_or(|m| m.is_empty()) {
        return Err(bad("you must provide a model parameter"));
    }
    if obj.get("stream") == Some(&json!(true)) {
        return Err(bad("this fake answers only non-streaming requests"));
    }
    let Some(messages) = obj.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return Err(bad("'messages' must be a non-empty array"));
    };
    let mut open_calls: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        match role {
            "system" | "user" => {
                if !m.get("content").is_some_and(Value::is_string) {
                    return Err(bad(&format!("messages[{i}].content must be a string")));
                }
            }
            "assistant" => {
                open_calls = m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_string))
                    .collect();
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or_default();
                if !open_calls.iter().any(|c| c == id) {
                    return Err(bad(&format!(
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls' (messages[{i}])"
                    )));
                }
            }
            other => return Err(bad(&format!("messages[{i}].role: invalid value {other:?}"))),
        }
    }
    Ok(())
}

async fn handle(State(st): State<St>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut log = st.log.lock().unwrap();
    let (status, answer, retry_after) = if uri.path() != "/v1/chat/completions" {
        let (s, b) = error(404, "invalid_request_error", "Invalid URL", None);
        (s, b, false)
    } else if authorization.as_deref() != Some(&format!("Bearer {}", st.key)) {
        let (s, b) = error(401, "invalid_request_error", "Incorrect API key provided.", Some("invalid_api_key"));
        (s, b, false)
    } else if let Err((s, b)) = check(&body) {
        (s, b, false)
    } else {
        let turn = log.script.pop_front().or_else(|| log.fallback.clone()).unwrap_or(Turn::text("I don't know."));
        log.next += 1;
        let id = log.next;
        let model = body["model"].clone();
        let usage = json!({"prompt_tokens": log.tokens_per_answer / 2, "completion_tokens": log.tokens_per_answer - log.tokens_per_answer / 2, "total_tokens": log.tokens_per_answer});
        let completion = |message: Value, finish: &str| {
            json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion", "created": 1_764_000_000 + id,
                "model": model, "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                "usage": usage})
        };
        match turn {
            Turn::Text(t) => {
                (200, completion(json!({"role": "assistant", "content": t, "refusal": null}), "stop"), false)
            }
            Turn::ToolCall { name, arguments, content } => {
                let call = json!({"id": format!("call_{id}"), "type": "function",
                    "function": {"name": name, "arguments": arguments.to_string()}});
                (
                    200,
                    completion(json!({"role": "assistant", "content": content, "tool_calls": [call]}), "tool_calls"),
                    false,
                )
            }
            Turn::Error { status, kind, message } => {
                let (s, b) = error(status, &kind, &message, None);
                (s, b, status == 429)
            }
        }
    };
    log.requests.push(ChatRequest { at: Instant::now(), body, authorization, status });
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(answer)).into_response();
    if retry_after {
        response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    response
}

/// An agent brain on the fake at `base_url` (`gpt-4o-mini`, `api_key` the key the fake was
/// started with, no knowledge, no ERP tools).
pub fn brain(base_url: String, api_key: &str) -> baton_core::agent::BrainConfig {
    baton_core::agent::BrainConfig::Llm(Box::new(baton_core::agent::LlmConfig {
        base_url,
        model: "gpt-4o-mini".into(),
        api_key: baton_core::model::Secret(api_key.into()),
        system_prompt: "You are the shop's assistant.".into(),
        handoff_description: baton_core::agent::default_handoff_description(),
        knowledge: vec![],
        max_tokens: 200,
        temperature: None,
        conversation_token_budget: 10_000,
        daily_token_budget: 100_000,
        timeout_secs: 5,
        erp: None,
    }))
}
