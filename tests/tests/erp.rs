//! The ERP client against the fake middleware of docs/erp-openapi.yaml: what it sends, and the
//! two-phase commit under lost answers and outages (never a double booking, never a success
//! nobody confirmed).

use baton_connectors::erp::{CommitOutcome, ErpClient};
use baton_core::agent::ErpConfig;
use baton_core::model::Secret;
use baton_core::ports::DeliveryError;
use baton_tests::erp::FakeErp;
use serde_json::json;
use std::time::Duration;

const KEY: &str = "erp-fake-key-77a1";

fn client() -> ErpClient {
    ErpClient::from_client(reqwest::Client::new(), Duration::from_secs(5))
}

fn cfg(fake: &FakeErp, key: &str) -> ErpConfig {
    ErpConfig { base_url: format!("{}/", fake.url()), api_key: Secret(key.into()), extras: vec![] }
}

#[tokio::test]
async fn callers_products_and_a_prepared_order() {
    let fake = FakeErp::start(KEY).await;
    let c = cfg(&fake, KEY);
    let found = client().contacts_by_phone(&c, "+385 91 123 4567").await.unwrap();
    assert_eq!(found["contacts"][0]["id"], "C-100");
    let none = client().contacts_by_phone(&c, "+15550000000").await.unwrap();
    assert_eq!(none["contacts"], json!([]));
    let products = client().search_products(&c, "flour t550", 10).await.unwrap();
    assert_eq!(products["products"][0]["sku"], "FLR-T550");
    let order = json!({"contact_id": "C-100", "lines": [{"sku": "FLR-T550", "quantity": 10}]});
    let prepared = client().prepare_order(&c, &order, "prepare-1").await.unwrap();
    assert_eq!(prepared["order"]["total"]["amount"], "12.00");
    // The same key again: the same transaction, not a second order.
    let again = client().prepare_order(&c, &order, "prepare-1").await.unwrap();
    assert_eq!(again["transaction_id"], prepared["transaction_id"]);
    assert_eq!(fake.transactions().len(), 1);
    let sent = fake.requests();
    assert_eq!(sent[0].query.as_deref(), Some("phone=%2B385+91+123+4567"));
    assert_eq!(sent.last().unwrap().idempotency_key.as_deref(), Some("prepare-1"));
    // Refusals: a bad line is permanent and quoted; a wrong key is a credential failure.
    let bad = json!({"contact_id": "C-100", "lines": [{"sku": "NOPE", "quantity": 1}]});
    let e = client().prepare_order(&c, &bad, "prepare-2").await.unwrap_err();
    assert!(matches!(e, DeliveryError::Permanent { .. }) && e.to_string().contains("unknown_sku"), "{e}");
    let e = client().search_products(&cfg(&fake, "wrong-key-123"), "flour", 5).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Unauthorized { .. }) && !e.to_string().contains("wrong-key-123"), "{e}");
    assert!(client().change_order(&c, "../x", &json!({}), "k").await.is_err(), "ids stay one path segment");
}

async fn prepared(fake: &FakeErp) -> String {
    let order = json!({"contact_id": "C-100", "lines": [{"sku": "FLR-T850", "quantity": 2}]});
    let p = client().prepare_order(&cfg(fake, KEY), &order, &format!("p-{}", fake.requests().len())).await.unwrap();
    p["transaction_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_lost_commit_answer_is_resolved_by_the_status_and_books_once() {
    let fake = FakeErp::start(KEY).await;
    let tx = prepared(&fake).await;
    fake.lose_commit_answers(1);
    let outcome = client().commit(&cfg(&fake, KEY), &tx).await;
    assert!(matches!(outcome, CommitOutcome::Committed { ref order_id } if order_id.starts_with("O-")), "{outcome:?}");
    assert_eq!(fake.committed_orders().len(), 1);
    let commits: Vec<_> = fake.requests().into_iter().filter(|r| r.path == "/transactions/commit").collect();
    assert_eq!(commits.len(), 1, "the status said committed: no second commit");
    assert_eq!(commits[0].idempotency_key.as_deref(), Some(format!("commit-{tx}").as_str()));
}

#[tokio::test]
async fn a_commit_that_fails_once_is_sent_again_with_the_same_key() {
    let fake = FakeErp::start(KEY).await;
    let tx = prepared(&fake).await;
    fake.fail_commits(1);
    let outcome = client().commit(&cfg(&fake, KEY), &tx).await;
    assert!(matches!(outcome, CommitOutcome::Committed { .. }), "{outcome:?}");
    let commits: Vec<_> = fake.requests().into_iter().filter(|r| r.path == "/transactions/commit").collect();
    assert_eq!(commits.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 200]);
    assert!(commits.iter().all(|r| r.idempotency_key == commits[0].idempotency_key));
    assert_eq!(fake.committed_orders().len(), 1);
}

#[tokio::test]
async fn an_unconfirmed_commit_is_unknown_and_an_aborted_one_failed() {
    let fake = FakeErp::start(KEY).await;
    let tx = prepared(&fake).await;
    fake.fail_commits(baton_connectors::erp::COMMIT_ATTEMPTS);
    let outcome = client().commit(&cfg(&fake, KEY), &tx).await;
    assert!(matches!(outcome, CommitOutcome::Unknown { .. }), "{outcome:?}");
    assert!(fake.committed_orders().is_empty());
    fake.abort(&tx);
    let outcome = client().commit(&cfg(&fake, KEY), &tx).await;
    assert!(matches!(outcome, CommitOutcome::Failed { .. }), "{outcome:?}");
    assert!(fake.committed_orders().is_empty());
}

#[tokio::test]
async fn the_optional_endpoints_answer_as_the_contract_says() {
    let fake = FakeErp::start(KEY).await;
    let c = cfg(&fake, KEY);
    assert_eq!(client().top_products(&c, "C-100").await.unwrap()["products"][0]["times_ordered"], 12);
    assert_eq!(client().complaints(&c, "C-100").await.unwrap()["complaints"][0]["status"], "in_progress");
    assert_eq!(client().promotions(&c).await.unwrap()["promotions"][0]["title"], "Flour week");
    let tx = prepared(&fake).await;
    let order_id = fake.transactions()[0].order_id.clone();
    assert_eq!(client().order(&c, &order_id).await.unwrap()["status"], "prepared");
    assert!(matches!(client().commit(&c, &tx).await, CommitOutcome::Committed { .. }));
    let booked = client().order(&c, &order_id).await.unwrap();
    assert_eq!(
        (booked["status"].as_str(), booked["delivery_estimate"].as_str()),
        (Some("committed"), Some("2026-12-04"))
    );
    // A reorder is a new prepared order with the same lines; nothing is booked by it.
    let again = client().reorder(&c, &order_id, "reorder-1").await.unwrap();
    assert_ne!(again["order"]["id"], json!(order_id));
    assert_eq!(again["order"]["lines"][0]["sku"], "FLR-T850");
    assert_eq!(fake.committed_orders().len(), 1);
    assert!(client().order(&c, "O-404").await.is_err());
}
