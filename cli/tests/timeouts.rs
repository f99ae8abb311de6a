//! The handoff rules on a running `baton serve` with a controllable clock: wait timeout and
//! its question, no answer -> TIMEOUT, keep waiting, session timeout after the human's last
//! message, cancel while waiting, outside service hours with the ticket fallback, and an
//! unavailable desk.

mod common;

use baton_core::agent::FallbackConfig;
use baton_core::hours::{Day, Period, ServiceHours};
use baton_core::model::{Secret, ServiceStatus};
use baton_core::ports::DeskStatusRecord;
use baton_core::Millis;
use baton_runtime::clock::ManualClock;
use baton_tests::eventually;
use baton_tests::widget::WidgetClient;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
/// Thursday 2024-12-12 10:00 in Zagreb (09:00 UTC).
const THURSDAY_10: i64 = 1_733_994_000_000;
/// Saturday 2024-12-14 10:00 in Zagreb.
const SATURDAY_10: i64 = THURSDAY_10 + 2 * 86_400_000;

async fn handed_off(hub: &common::Hub) -> (WidgetClient, String) {
    let mut w = WidgetClient::start(&hub.base, "shop", Some("t@example.com")).await;
    w.send("I want to talk to a human").await;
    w.wait_for("waiting notice", |m| m["text"].as_str().unwrap().contains("connecting")).await;
    let est =
        eventually(WAIT, "establish", || async { hub.desk.requests_to("/conversation/establish").into_iter().next() })
            .await;
    (w, est.body["conversation_id"].as_str().unwrap().to_string())
}

async fn close_request(hub: &common::Hub) -> serde_json::Value {
    eventually(WAIT, "close at the desk", || async { hub.desk.requests_to("/conversation/close").into_iter().next() })
        .await
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_human_then_no_answer_closes_the_request_with_timeout() {
    let clock = Arc::new(ManualClock::new(Millis(THURSDAY_10)));
    let hub = common::hub_with(clock.clone(), |_| {}).await;
    let (mut w, conv) = handed_off(&hub).await;

    clock.advance_secs(59);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(w.all().await.iter().all(|m| m["buttons"].as_array().is_none_or(|b| b.len() < 2)), "not asked before 60 s");
    clock.advance_secs(2);
    let q = w.wait_for("end-or-wait question", |m| m["buttons"].as_array().is_some_and(|b| b.len() == 2)).await;
    assert_eq!(q["buttons"][0]["value"], "/keep_waiting");
    assert_eq!(q["buttons"][1]["value"], "/end");

    clock.advance_secs(61);
    let close = close_request(&hub).await;
    assert_eq!(close["conversation_id"], conv.as_str());
    assert_eq!(close["type"], "TIMEOUT");
    w.wait_for("timed-out notice", |m| m["text"].as_str().unwrap().contains("nobody could answer")).await;
    // The bot answers again.
    w.send("What are your opening hours?").await;
    w.wait_for("bot answer", |m| m["from"] == "bot").await;
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_waiting_then_session_timeout_after_the_humans_last_message() {
    let clock = Arc::new(ManualClock::new(Millis(THURSDAY_10)));
    let hub = common::hub_with(clock.clone(), |_| {}).await;
    let (mut w, conv) = handed_off(&hub).await;

    clock.advance_secs(61);
    w.wait_for("question", |m| m["buttons"].as_array().is_some_and(|b| b.len() == 2)).await;
    w.send("/keep_waiting").await;
    w.wait_for("kept waiting", |m| m["text"].as_str().unwrap().contains("keep waiting")).await;
    // The old question's reply timer is void: nothing closes 61 s later, the wait timer asks again.
    clock.advance_secs(61);
    w.wait_for("asked again", |m| m["buttons"].as_array().is_some_and(|b| b.len() == 2)).await;
    assert!(hub.desk.requests_to("/conversation/close").is_empty());

    // A human replies: the session is official; the user answers, the human writes again.
    assert_eq!(hub.desk_reply(&conv, "Sorry for the wait!", Some("msg_h1")).await.status(), 200);
    w.wait_for("human", |m| m["from"] == "human").await;
    clock.advance_secs(100);
    w.send("No problem").await;
    eventually(WAIT, "user message at the desk", || async { hub.desk.requests_to("/chat").into_iter().next() }).await;
    clock.advance_secs(170);
    assert_eq!(hub.desk_reply(&conv, "Anything else?", Some("msg_h2")).await.status(), 200);
    w.wait_for("second human message", |m| m["text"] == "Anything else?").await;
    clock.advance_secs(179);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(hub.desk.requests_to("/conversation/close").is_empty(), "180 s count from the human's last message");
    clock.advance_secs(2);
    let close = close_request(&hub).await;
    assert_eq!(close["type"], "TIMEOUT");
    w.wait_for("session ended notice", |m| m["text"].as_str().unwrap().contains("no reply for a while")).await;
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_can_cancel_while_waiting() {
    let clock = Arc::new(ManualClock::new(Millis(THURSDAY_10)));
    let hub = common::hub_with(clock.clone(), |_| {}).await;
    let (mut w, conv) = handed_off(&hub).await;
    w.send("/end").await;
    let close = close_request(&hub).await;
    assert_eq!((close["conversation_id"].as_str(), close["type"].as_str()), (Some(conv.as_str()), Some("USER_CLOSED")));
    w.wait_for("ended notice", |m| m["text"].as_str().unwrap().contains("You cancelled the request")).await;
    // No timer is left to fire.
    clock.advance_secs(3600);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hub.desk.requests_to("/conversation/close").len(), 1);
    hub.running.stop().await;
}

fn weekdays_9_to_17() -> ServiceHours {
    ServiceHours {
        time_zone: "Europe/Zagreb".into(),
        periods: vec![Period {
            days: Some(vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri]),
            date: None,
            from: "09:00".into(),
            to: "17:00".into(),
        }],
        holidays: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_service_hours_the_user_is_told_when_and_a_ticket_is_opened() {
    let clock = Arc::new(ManualClock::new(Millis(SATURDAY_10)));
    let hub = common::hub_with(clock.clone(), |a| a.hours = Some(weekdays_9_to_17())).await;
    // The fake desk doubles as the ticket system on another path.
    let mut agent = common::shop_agent(&hub.desk.url());
    agent.hours = Some(weekdays_9_to_17());
    agent.fallback = FallbackConfig::Ticket {
        url: format!("{}/tickets", hub.desk.url()),
        signing_secret: Some(Secret(common::SECRET.into())),
    };
    hub.running.ports.store.put_agent(&agent).await.unwrap();

    let mut w = WidgetClient::start(&hub.base, "shop", Some("sat@example.com")).await;
    w.send("What are your opening hours?").await;
    w.wait_for("bot answer", |m| m["from"] == "bot").await;
    w.send("I want to talk to a human").await;
    let m = w.wait_for("out-of-hours reply", |m| m["text"].as_str().unwrap().contains("not available")).await;
    assert!(m["text"].as_str().unwrap().contains("2024-12-16 09:00 (Europe/Zagreb)"), "{m}");
    let ticket = eventually(WAIT, "ticket", || async { hub.desk.requests_to("/tickets").into_iter().next() }).await;
    assert_eq!(ticket.body["type"], "handoff.fallback");
    assert_eq!(ticket.body["data"]["email"], "sat@example.com");
    assert_eq!(ticket.body["data"]["question"], "I want to talk to a human");
    assert_eq!(ticket.body["data"]["history"][0]["text"], "What are your opening hours?");
    w.wait_for("fallback notice", |m| m["text"].as_str().unwrap().contains("ticket T-")).await;
    assert!(hub.desk.requests_to("/conversation/establish").is_empty(), "no desk conversation outside hours");

    // On Monday at 09:00 the team is there.
    clock.advance_secs(2 * 86_400 - 3600);
    w.send("human").await;
    eventually(WAIT, "establish on Monday", || async {
        hub.desk.requests_to("/conversation/establish").into_iter().next()
    })
    .await;
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_desk_is_never_a_silent_wait() {
    let clock = Arc::new(ManualClock::new(Millis(THURSDAY_10)));
    // The status is set below; a start-up probe finishing later would overwrite it.
    let hub = common::hub_with_probe(clock.clone(), false, |_| {}).await;
    let rec = DeskStatusRecord {
        status: ServiceStatus::Unavailable,
        detail: "credentials rejected".into(),
        checked_at: Millis(THURSDAY_10),
    };
    hub.running.ports.store.set_desk_status("shop", &rec).await.unwrap();
    let mut w = WidgetClient::start(&hub.base, "shop", Some("u@example.com")).await;
    w.send("human").await;
    w.wait_for("desk unavailable notice", |m| m["text"].as_str().unwrap().contains("cannot be reached")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hub.desk.requests_to("/conversation/establish").is_empty());
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_outage_loses_nothing_and_keeps_the_order() {
    let clock = Arc::new(ManualClock::new(Millis(THURSDAY_10)));
    let hub = common::hub_with(clock.clone(), |a| a.policy.wait_timeout_secs = 3600).await;
    let (w, _) = handed_off(&hub).await;

    // The desk answers 503 to the next 6 calls, while the user writes five messages.
    hub.desk.fail_next(6);
    for i in 0..5 {
        w.send(&format!("during outage {i}")).await;
    }
    // Retries are due on the hub's clock; move it on until everything got through.
    let got = eventually(Duration::from_secs(20), "every message after the outage", || {
        clock.advance_secs(30);
        async {
            let chats: Vec<String> =
                hub.desk.requests_to("/chat").iter().map(|r| r.body["body"].as_str().unwrap().to_string()).collect();
            (chats.len() >= 5).then_some(chats)
        }
    })
    .await;
    let want: Vec<String> = (0..5).map(|i| format!("during outage {i}")).collect();
    assert_eq!(got, want);
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_service_hours_the_team_gets_an_email_and_the_user_is_told() {
    let clock = Arc::new(ManualClock::new(Millis(SATURDAY_10)));
    let smtp = baton_tests::smtp::FakeSmtp::start("baton", "smtp-pass-e2e").await;
    let url = smtp.url("baton", "smtp-pass-e2e");
    let hub = common::hub_with(clock.clone(), move |a| {
        a.hours = Some(weekdays_9_to_17());
        a.fallback = FallbackConfig::Email {
            smtp_url: Some(Secret(url)),
            capture_dir: None,
            from: "baton@shop.example".into(),
            to: vec!["sales@shop.example".into()],
        };
    })
    .await;
    let mut w = WidgetClient::start(&hub.base, "shop", Some("sat@example.com")).await;
    w.send("I want to talk to a human").await;
    w.wait_for("fallback notice", |m| m["text"].as_str().unwrap().contains("by e-mail to our team")).await;
    let mail = &smtp.wait_for(1, WAIT).await[0];
    assert_eq!(mail.to, ["sales@shop.example"]);
    assert_eq!(mail.header("Reply-To").as_deref(), Some("sat@example.com"));
    assert!(mail.body().contains("I want to talk to a human"));
    assert!(hub.desk.requests_to("/conversation/establish").is_empty(), "no desk conversation outside hours");
    hub.running.stop().await;
}
