//! The e-mail and WhatsApp fallbacks against a fake SMTP server and the fake Graph API, and
//! the capture mode that writes `.eml` files for local use.

use baton_connectors::email::EmailFallback;
use baton_connectors::outbound::http_client;
use baton_connectors::ticket::TicketFallback;
use baton_connectors::whatsapp::WhatsappClient;
use baton_core::agent::{Agent, FallbackConfig, WhatsappConfig, WhatsappTemplate};
use baton_core::effect::HandoffRequest;
use baton_core::model::{Millis, Role, Secret, Turn};
use baton_core::ports::{DeliveryError, Fallback};
use baton_core::{Channel, ConversationKey};
use baton_runtime::fallbacks::FallbackRouter;
use baton_tests::smtp::FakeSmtp;
use baton_tests::whatsapp::FakeWhatsapp;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn agent(fallback: FallbackConfig) -> Agent {
    let mut a: Agent = serde_json::from_value(
        json!({"id": "shop", "name": "Example Shop", "brain": {"kind": "faq"}, "desk": {"kind": "none"}}),
    )
    .unwrap();
    a.fallback = fallback;
    a
}

fn request(email: &str) -> HandoffRequest {
    HandoffRequest {
        params: Default::default(),
        handoff_id: "h-1".into(),
        email: email.into(),
        question: "Where is my order 1234?".into(),
        reason: "outside service hours".into(),
        history: vec![
            Turn { role: Role::User, text: "hello".into(), at: Millis(1) },
            Turn { role: Role::Bot, text: "Hi! How can I help?".into(), at: Millis(2) },
        ],
    }
}

fn router() -> FallbackRouter {
    let http = http_client(Duration::from_secs(5), baton_connectors::outbound::Targets::Any);
    FallbackRouter {
        ticket: TicketFallback::from_client(http.clone(), Duration::from_secs(5)),
        email: EmailFallback::new(Duration::from_secs(5)),
        whatsapp: WhatsappClient::from_client(http, Duration::from_secs(5)),
    }
}

fn key() -> ConversationKey {
    ConversationKey::new("shop", Channel::Telegram, "42").unwrap()
}

#[tokio::test]
async fn the_team_gets_an_email_with_the_request_over_smtp() {
    let smtp = FakeSmtp::start("baton", "s3cret-pass").await;
    let fallback = FallbackConfig::Email {
        smtp_url: Some(Secret(smtp.url("baton", "s3cret-pass"))),
        capture_dir: None,
        from: "baton@shop.example".into(),
        to: vec!["sales@shop.example".into(), "lead@shop.example".into()],
    };
    let a = agent(fallback);
    let detail = router().escalate(&a, &key(), &request("ann@example.com"), "msg_2Yx7").await.unwrap();
    assert_eq!(detail, baton_connectors::email::DETAIL);
    let mail = &smtp.wait_for(1, WAIT).await[0];
    assert_eq!(mail.from, "baton@shop.example");
    assert_eq!(mail.to, ["sales@shop.example", "lead@shop.example"]);
    assert_eq!(mail.header("Message-ID").as_deref(), Some("<msg_2Yx7@shop.example>"), "stable across retries");
    assert_eq!(mail.header("Reply-To").as_deref(), Some("ann@example.com"));
    assert!(mail.header("Subject").unwrap().contains("Where is my order 1234?"));
    let body = mail.body();
    for part in [
        "Reason: outside service hours",
        "User: hello",
        "Assistant: Hi! How can I help?",
        "Conversation: shop#telegram#42",
    ] {
        assert!(body.contains(part), "{part:?} missing in:\n{body}");
    }
    // The agent's default address is not the user's: no Reply-To.
    let default = a.policy.default_email.clone();
    router().escalate(&a, &key(), &request(&default), "msg_2Yx8").await.unwrap();
    assert_eq!(smtp.wait_for(2, WAIT).await[1].header("Reply-To"), None);
}

#[tokio::test]
async fn smtp_refusals_map_to_retry_or_not_and_never_show_the_password() {
    let smtp = FakeSmtp::start("baton", "s3cret-pass").await;
    let with = |url: String| {
        agent(FallbackConfig::Email {
            smtp_url: Some(Secret(url)),
            capture_dir: None,
            from: "baton@shop.example".into(),
            to: vec!["sales@shop.example".into()],
        })
    };
    let a = with(smtp.url("baton", "s3cret-pass"));
    smtp.refuse_next(1, "451 4.3.0 try again later");
    let e = router().escalate(&a, &key(), &request("ann@example.com"), "m1").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }), "{e}");
    smtp.refuse_next(1, "550 5.7.1 relaying denied");
    let e = router().escalate(&a, &key(), &request("ann@example.com"), "m2").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }), "{e}");
    let wrong = with(smtp.url("baton", "wrong-pass-123"));
    let e = router().escalate(&wrong, &key(), &request("ann@example.com"), "m3").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }), "{e}");
    assert!(!e.to_string().contains("wrong-pass-123"), "{e}");
    assert_eq!(smtp.auth_failures(), 1);
    let closed = with("smtp://baton:s3cret-pass@127.0.0.1:9".into());
    let e = router().escalate(&closed, &key(), &request("ann@example.com"), "m4").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Retryable { .. }) && !e.to_string().contains("s3cret"), "{e}");
    assert!(smtp.mails().is_empty());
}

#[tokio::test]
async fn capture_mode_writes_the_email_as_an_eml_file() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let a = agent(FallbackConfig::Email {
        smtp_url: None,
        capture_dir: Some(outbox.display().to_string()),
        from: "baton@shop.example".into(),
        to: vec!["sales@shop.example".into()],
    });
    router().escalate(&a, &key(), &request("ann@example.com"), "msg_cap").await.unwrap();
    let files: Vec<_> = std::fs::read_dir(&outbox).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("eml"));
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("Message-ID: <msg_cap@shop.example>") && text.contains("Where is my order 1234?"), "{text}");
}

#[tokio::test]
async fn a_sales_representative_gets_a_whatsapp_template() {
    let wa = FakeWhatsapp::start("EAAG-fallback-token", "106540352242922").await;
    let mut a = agent(FallbackConfig::Whatsapp {
        to: "+385911234567".into(),
        template: WhatsappTemplate { name: "new_lead".into(), language: "hr".into() },
    });
    a.channels.whatsapp = Some(WhatsappConfig {
        phone_number_id: "106540352242922".into(),
        access_token: Secret("EAAG-fallback-token".into()),
        app_secret: Secret("s".into()),
        verify_token: Secret("v".into()),
        api_base: wa.url(),
        api_version: "v21.0".into(),
        window_template: None,
    });
    let detail = router().escalate(&a, &key(), &request("ann@example.com"), "m1").await.unwrap();
    assert!(detail.contains("WhatsApp"), "{detail}");
    let sent = wa.wait_for_messages(1, WAIT).await;
    assert_eq!(sent[0]["to"], "385911234567");
    assert_eq!(sent[0]["type"], "template");
    assert_eq!(sent[0]["template"]["name"], "new_lead");
    assert_eq!(sent[0]["template"]["language"]["code"], "hr");
    let parameter = sent[0]["template"]["components"][0]["parameters"][0]["text"].as_str().unwrap();
    assert!(parameter.contains("ann@example.com") && parameter.contains("Where is my order 1234?"), "{parameter}");
    assert!(!parameter.contains('\n'), "Meta refuses newlines in parameters");
}
