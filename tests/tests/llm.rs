//! The LLM brain against the fake OpenAI-compatible server over loopback HTTP: what it sends
//! (model, key, system prompt with knowledge, history, the handoff tool), how it reads
//! answers and tool calls, how refusals map to retries, and the token budgets.

use baton_brains::LlmBrain;
use baton_core::agent::{Agent, BrainConfig, FaqEntry, LlmConfig};
use baton_core::event::BrainReply;
use baton_core::model::{Millis, Role, Secret, Turn};
use baton_core::ports::{Brain, BrainRequest, Clock, DeliveryError, KeyValue};
use baton_core::{Channel, ConversationKey};
use baton_tests::openai::{FakeOpenai, Turn as Scripted};
use serde_json::json;
use std::sync::Arc;

const KEY: &str = "sk-fake-openai-key-5fc1";

struct Fixed(Millis);
impl Clock for Fixed {
    fn now(&self) -> Millis {
        self.0
    }
}

/// A real SQLite key-value store in a directory removed when the test ends.
fn kv() -> (tempfile::TempDir, Arc<dyn KeyValue>) {
    let dir = tempfile::tempdir().unwrap();
    let db = baton_embedded::Db::open(&dir.path().join("kv.sqlite")).unwrap();
    (dir, db)
}

fn agent(base_url: &str) -> Agent {
    let mut a: Agent = serde_json::from_value(json!({
        "id": "shop", "name": "Shop",
        "brain": {"kind": "faq"},
        "desk": {"kind": "none"},
    }))
    .unwrap();
    a.brain = BrainConfig::Llm(Box::new(LlmConfig {
        base_url: base_url.into(),
        model: "gpt-4o-mini".into(),
        api_key: Secret(KEY.into()),
        system_prompt: "You are the shop's assistant.".into(),
        handoff_description: "Hand over to a human when the user wants a refund.".into(),
        knowledge: vec![
            FaqEntry { question: "How long does shipping take?".into(), answer: "2-4 days.".into(), keywords: vec![] },
            FaqEntry { question: "What are your opening hours?".into(), answer: "9-17.".into(), keywords: vec![] },
        ],
        max_tokens: 300,
        temperature: Some(0.2),
        conversation_token_budget: 250,
        daily_token_budget: 1_000,
        timeout_secs: 5,
        erp: None,
    }));
    a
}

fn ask(user: &str, question: &str) -> BrainRequest {
    BrainRequest {
        params: Default::default(),
        conversation: ConversationKey::new("shop", Channel::Widget, user).unwrap(),
        question: question.into(),
        history: vec![
            Turn { role: Role::User, text: "hi".into(), at: Millis(1) },
            Turn { role: Role::Bot, text: "Hello! How can I help?".into(), at: Millis(2) },
            Turn { role: Role::User, text: question.into(), at: Millis(3) },
        ],
        context: None,
        language: "en".into(),
    }
}

#[tokio::test]
async fn answers_hand_offs_and_what_is_sent() {
    let fake = FakeOpenai::start(KEY).await;
    let (_dir, store) = kv();
    let brain = LlmBrain::new(reqwest::Client::new(), store, Arc::new(Fixed(Millis(1_795_082_400_000))));
    let a = agent(&fake.url());
    fake.script([
        Scripted::text("Shipping takes 2-4 days."),
        Scripted::tool("handoff", json!({"reason": "the user wants a refund"})),
    ]);
    let reply = brain.answer(&a, &ask("u1", "How long does shipping take?")).await.unwrap();
    assert_eq!(reply, BrainReply::Answer { text: "Shipping takes 2-4 days.".into(), buttons: Vec::new() });
    let sent = &fake.requests()[0];
    assert_eq!(sent.authorization.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(sent.body["stream"], false);
    assert_eq!(sent.body["max_tokens"], 300);
    assert_eq!(sent.body["tools"][0]["function"]["name"], "handoff");
    assert_eq!(sent.body["tools"][0]["function"]["description"], "Hand over to a human when the user wants a refund.");
    let messages = sent.body["messages"].as_array().unwrap();
    let system = messages[0]["content"].as_str().unwrap();
    assert!(system.contains("Q: How long does shipping take?"), "the relevant entry is given: {system}");
    assert!(!system.contains("opening hours"), "an unrelated entry is not: {system}");
    assert_eq!(messages.last().unwrap()["content"], "How long does shipping take?");
    assert_eq!(messages.len(), 4, "system, two earlier turns, the question once");

    let reply = brain.answer(&a, &ask("u2", "I want my money back")).await.unwrap();
    assert_eq!(reply, BrainReply::Handoff { reason: "the user wants a refund".into(), text: None });
}

#[tokio::test]
async fn tools_it_does_not_have_are_refused_then_it_gives_up() {
    let fake = FakeOpenai::start(KEY).await;
    let (_dir, store) = kv();
    let brain = LlmBrain::new(reqwest::Client::new(), store, Arc::new(Fixed(Millis(1_795_082_400_000))));
    let a = agent(&fake.url());
    fake.script([
        Scripted::tool("get_weather", json!({"city": "Zagreb"})),
        Scripted::text("I can't check the weather."),
    ]);
    let reply = brain.answer(&a, &ask("u1", "weather?")).await.unwrap();
    assert_eq!(reply, BrainReply::Answer { text: "I can't check the weather.".into(), buttons: Vec::new() });
    // The second request answered the call (the fake refuses a tool message without one).
    let second = &fake.requests()[1];
    assert_eq!(second.status, 200);
    let last = second.body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "tool");
    // A model that keeps calling: handed to a human after the round limit, not a loop.
    fake.always(Scripted::tool("get_weather", json!({})));
    let before = fake.requests().len();
    let reply = brain.answer(&a, &ask("u2", "weather?")).await.unwrap();
    assert!(matches!(reply, BrainReply::Handoff { .. }), "{reply:?}");
    assert_eq!(fake.requests().len() - before, baton_brains::llm::MAX_TOOL_ROUNDS + 1);
}

#[tokio::test]
async fn refusals_become_retries_or_failures_and_never_show_the_key() {
    let fake = FakeOpenai::start(KEY).await;
    let (_dir, store) = kv();
    let brain = LlmBrain::new(reqwest::Client::new(), store, Arc::new(Fixed(Millis(1_795_082_400_000))));
    let a = agent(&fake.url());
    fake.script([
        Scripted::error(429, "rate_limit_error", "Rate limit reached"),
        Scripted::error(500, "server_error", "oops"),
    ]);
    let e = brain.answer(&a, &ask("u1", "hi")).await.unwrap_err();
    assert_eq!(
        e,
        DeliveryError::Retryable {
            message: "the model endpoint answered HTTP 429: Rate limit reached".into(),
            retry_after_ms: Some(1000)
        }
    );
    assert!(matches!(brain.answer(&a, &ask("u1", "hi")).await, Err(DeliveryError::Retryable { .. })));
    let mut wrong = agent(&fake.url());
    if let BrainConfig::Llm(c) = &mut wrong.brain {
        c.api_key = Secret("sk-wrong-key-000".into());
    }
    let e = brain.answer(&wrong, &ask("u1", "hi")).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }) && !e.to_string().contains("sk-wrong"), "{e}");
    let e = brain.answer(&agent("http://127.0.0.1:9/v1"), &ask("u1", "hi")).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e}");
}

#[tokio::test]
async fn a_used_up_budget_hands_over_without_calling_the_model() {
    let fake = FakeOpenai::start(KEY).await;
    fake.tokens_per_answer(100);
    let now = Millis(1_795_082_400_000);
    let (_dir, store) = kv();
    let brain = LlmBrain::new(reqwest::Client::new(), store.clone(), Arc::new(Fixed(now)));
    let a = agent(&fake.url());
    // 250 tokens per conversation: three answers of 100, then a handoff.
    for _ in 0..3 {
        assert!(matches!(brain.answer(&a, &ask("u1", "hi")).await.unwrap(), BrainReply::Answer { .. }));
    }
    let reply = brain.answer(&a, &ask("u1", "hi")).await.unwrap();
    assert!(
        matches!(reply, BrainReply::Handoff { ref reason, .. } if reason.contains("this conversation")),
        "{reply:?}"
    );
    assert_eq!(fake.requests().len(), 3);
    // 1000 per day across conversations: seven more answers, then every conversation is handed over.
    for u in 0..7 {
        assert!(matches!(brain.answer(&a, &ask(&format!("v{u}"), "hi")).await.unwrap(), BrainReply::Answer { .. }));
    }
    let reply = brain.answer(&a, &ask("w1", "hi")).await.unwrap();
    assert!(matches!(reply, BrainReply::Handoff { ref reason, .. } if reason.contains("today")), "{reply:?}");
    // The next UTC day starts afresh.
    let tomorrow = LlmBrain::new(reqwest::Client::new(), store, Arc::new(Fixed(Millis(now.0 + 86_400_000))));
    assert!(matches!(tomorrow.answer(&a, &ask("w1", "hi")).await.unwrap(), BrainReply::Answer { .. }));
}

#[tokio::test]
async fn erp_extras_are_tools_only_where_the_erp_offers_them() {
    use baton_core::agent::{ErpConfig, ErpExtra};
    let fake = FakeOpenai::start(KEY).await;
    let erp = baton_tests::erp::FakeErp::start("erp-key-x1").await;
    let (_dir, store) = kv();
    let brain = LlmBrain::new(reqwest::Client::new(), store, Arc::new(Fixed(Millis(1_795_082_400_000))));
    let mut a = agent(&fake.url());
    if let BrainConfig::Llm(c) = &mut a.brain {
        c.conversation_token_budget = 100_000;
        c.erp = Some(ErpConfig {
            base_url: erp.url(),
            api_key: Secret("erp-key-x1".into()),
            extras: vec![ErpExtra::TopProducts, ErpExtra::Promotions],
        });
    }
    let mut request = ask("u1", "what do I usually order?");
    request.params.insert("contact_id".into(), "C-100".into());
    fake.script([
        Scripted::tool("top_products", json!({})),
        Scripted::tool("order_status", json!({"order_id": "O-1"})),
        Scripted::text("You usually order Flour T550."),
    ]);
    let answer = brain.answer(&a, &request).await.unwrap();
    assert_eq!(answer, BrainReply::Answer { text: "You usually order Flour T550.".into(), buttons: Vec::new() });
    let sent = fake.requests();
    let names: Vec<&str> =
        sent[0].body["tools"].as_array().unwrap().iter().filter_map(|t| t["function"]["name"].as_str()).collect();
    assert!(names.contains(&"top_products") && names.contains(&"current_promotions"), "{names:?}");
    assert!(!names.contains(&"order_status") && !names.contains(&"reorder"), "{names:?}");
    let tool_answer = |i: usize| {
        sent[i].body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string()
    };
    assert!(tool_answer(1).contains("times_ordered"), "the session's customer was used: {}", tool_answer(1));
    assert!(tool_answer(2).contains("no tool named"), "an extra the ERP does not offer: {}", tool_answer(2));
}

/// The calls an action endpoint received: headers and body.
type Calls = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A customer endpoint for actions: records each call and answers 503 to the first
/// `fail_first` calls.
async fn action_server(fail_first: usize) -> (String, Calls) {
    use axum::response::IntoResponse;
    let seen: Calls = Default::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/actions/customer",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let mut calls = log.lock().unwrap();
                calls.push((headers, body.to_vec()));
                if calls.len() <= fail_first {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                axum::Json(json!({"customer": {"id": "C-9", "tier": "gold", "open_invoices": 2}})).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/actions/customer", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

#[tokio::test]
async fn configured_actions_are_tools_whose_answers_become_session_parameters() {
    use baton_connectors::standard_webhooks::{SigningSecret, WebhookHeaders};
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let fake = FakeOpenai::start(KEY).await;
    let (url, seen) = action_server(1).await;
    let (_dir, store) = kv();
    let brain = LlmBrain::new(reqwest::Client::new(), store, Arc::new(Fixed(Millis(1_795_082_400_000))));
    let mut a = agent(&fake.url());
    if let BrainConfig::Llm(c) = &mut a.brain {
        c.conversation_token_budget = 100_000;
    }
    a.actions = vec![baton_core::agent::ActionConfig {
        name: "lookup_customer".into(),
        description: "Look the customer up by phone number.".into(),
        inputs: vec!["phone".into()],
        url,
        signing_secret: Some(Secret(SECRET.into())),
        outputs: [
            ("customer_id".to_string(), "/customer/id".to_string()),
            ("tier".to_string(), "/customer/tier".to_string()),
        ]
        .into(),
        timeout_secs: 5,
        retries: 2,
        sanitize: Vec::new(),
        format: Default::default(),
    }];
    let mut request = ask("u1", "do I have open invoices?");
    request.params.insert("phone".into(), "+385911234567".into());
    fake.script([Scripted::tool("lookup_customer", json!({})), Scripted::text("You have 2 open invoices.")]);
    let answer = brain.answer_with_params(&a, &request).await.unwrap();
    assert_eq!(answer.reply, BrainReply::Answer { text: "You have 2 open invoices.".into(), buttons: Vec::new() });
    assert_eq!(answer.params.get("customer_id").map(String::as_str), Some("C-9"));
    assert_eq!(answer.params.get("tier").map(String::as_str), Some("gold"));
    // The tool is offered with its inputs; the answer went back to the model.
    let sent = fake.requests();
    let tool = sent[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "lookup_customer")
        .cloned()
        .unwrap();
    assert_eq!(tool["function"]["description"], "Look the customer up by phone number.");
    assert!(tool["function"]["parameters"]["properties"].get("phone").is_some());
    let back = sent[1].body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
    assert!(back.contains("open_invoices"), "{back}");
    // Called twice (503, then answered) with the session's phone, the same webhook-id, signed.
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let body: serde_json::Value = serde_json::from_slice(&calls[1].1).unwrap();
    assert_eq!(body["inputs"]["phone"], "+385911234567");
    assert_eq!(body["action"], "lookup_customer");
    let id = |i: usize| calls[i].0["webhook-id"].to_str().unwrap().to_string();
    assert_eq!(id(0), id(1), "a retry is recognisable");
    let h = &calls[1].0;
    let headers = WebhookHeaders {
        id: h["webhook-id"].to_str().unwrap(),
        timestamp: h["webhook-timestamp"].to_str().unwrap(),
        signature: h["webhook-signature"].to_str().unwrap(),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    SigningSecret::parse(SECRET).unwrap().verify(&headers, &calls[1].1, now).expect("signed per Standard Webhooks");

    // Without the input known, the model is told to ask; nothing is called.
    fake.script([Scripted::tool("lookup_customer", json!({})), Scripted::text("What is your phone number?")]);
    brain.answer(&a, &ask("u2", "do I have open invoices?")).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
    let back = fake.requests()[3].body["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(back.contains("phone is not known"), "{back}");
}
