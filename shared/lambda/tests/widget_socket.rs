//! The widget's WebSockets on AWS: `widget-socket` handling API Gateway's `$connect` events
//! (the widget checked as its HTTP calls are, the connection recorded), and the worker
//! pushing each message for the widget to the conversation's connections through a fake of
//! API Gateway's management API that checks the SigV4 signature; a closed connection (410)
//! is forgotten. Against moto.

mod common;

use baton_lambda::{wire, Aws, SocketHandler};
use baton_tests::apigw_socket::FakeSocketApi;
use common::{connect_event, hub, run_worker, Hub, Widget, HOURS, SHIPPING};
use serde_json::Value;
use std::sync::Arc;

/// The hub's functions, with the worker pushing to `sockets`.
async fn pushing(hub: &Hub, sockets: &FakeSocketApi) -> Aws {
    let mut config = common::config(&hub.aws.config.table, &hub.queues);
    config.widget_socket_url = Some(sockets.url());
    let secrets = Arc::new(baton_aws::SsmSecrets::new(baton_aws::ssm_client_from_env().await));
    wire(config, Arc::new(baton_runtime::clock::SystemClock), hub.dynamo.clone(), hub.sqs.clone(), secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_widget_gets_its_messages_pushed_and_a_closed_connection_is_forgotten() {
    let hub = hub(|_| {}).await;
    let sockets = FakeSocketApi::start("test", "test", "us-east-1").await;
    let aws = pushing(&hub, &sockets).await;
    let mut w = Widget::start(&hub, None).await;

    let connection = "L0SM9cOFvHcCIhw=";
    let r = SocketHandler::new(&aws)
        .handle(connect_event(connection, "shop", Some(&w.token), "https://shop.example"))
        .await;
    assert_eq!(r.status_code, 200, "{r:?}");
    sockets.open(connection);
    assert_eq!(aws.store.sockets(&w.key()).await.unwrap(), vec![connection.to_string()]);

    w.send("What are your opening hours?").await;
    common::run_worker_on(&aws, &hub.sqs, &hub.queues.events).await;
    assert!(sockets.bad_signatures().is_empty(), "{:?}", sockets.bad_signatures());
    let pushes = sockets.pushes();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0].connection, connection);
    let pushed: Value = serde_json::from_str(&pushes[0].body).unwrap();
    assert_eq!(pushed["text"], HOURS);
    assert_eq!(pushed["from"], "bot");
    // What was pushed is the logged message, with the cursor the widget polls with.
    let logged = w.next("the answer in the log", |m| m["from"] == "bot").await;
    assert_eq!(pushed["seq"], logged["seq"]);
    assert_eq!(pushed["id"], logged["id"]);

    // The browser went away: API Gateway answers 410 and the connection is forgotten; the
    // message is in the log all the same.
    sockets.close(connection);
    w.send("How long does shipping take?").await;
    common::run_worker_on(&aws, &hub.sqs, &hub.queues.events).await;
    assert_eq!(sockets.gone(), 1);
    assert!(aws.store.sockets(&w.key()).await.unwrap().is_empty());
    assert_eq!(w.next("the second answer", |m| m["from"] == "bot").await["text"], SHIPPING);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_what_the_widget_api_refuses() {
    let hub = hub(|a| a.widget.allowed_origins = vec!["https://shop.example".into()]).await;
    let aws = &hub.aws;
    let sockets = SocketHandler::new(aws);
    let w = Widget::start(&hub, None).await;
    let refused = [
        (connect_event("c1=", "shop", None, "https://shop.example"), 401),
        (connect_event("c2=", "shop", Some("u1.forged"), "https://shop.example"), 401),
        (connect_event("c3=", "shop", Some(&w.token), "https://evil.example"), 403),
        (connect_event("c4=", "nobody", Some(&w.token), "https://shop.example"), 404),
    ];
    for (event, status) in refused {
        let connection = event.request_context.connection_id.clone().unwrap();
        let r = sockets.handle(event).await;
        assert_eq!(r.status_code, status, "{connection}: {r:?}");
    }
    assert!(aws.store.sockets(&w.key()).await.unwrap().is_empty(), "nothing refused was recorded");

    // Without ?agent= there is nothing to check against.
    let mut no_agent = connect_event("c5=", "shop", Some(&w.token), "https://shop.example");
    no_agent.query_string_parameters = Default::default();
    assert_eq!(sockets.handle(no_agent).await.status_code, 400);

    let ok = sockets.handle(connect_event("c6=", "shop", Some(&w.token), "https://shop.example")).await;
    assert_eq!(ok.status_code, 200);
    // One address opening connection after connection is limited, as its HTTP calls are.
    let mut limited = false;
    for i in 0..200 {
        let r = sockets.handle(connect_event(&format!("r{i}="), "shop", Some(&w.token), "https://shop.example")).await;
        if r.status_code == 429 {
            limited = true;
            break;
        }
        assert_eq!(r.status_code, 200, "{r:?}");
    }
    assert!(limited, "connections from one address are rate limited");

    // Without a WebSocket API configured the worker pushes nowhere; the widget polls.
    let mut w = w;
    w.send("What are your opening hours?").await;
    run_worker(&hub).await;
    assert_eq!(w.next("the answer", |m| m["from"] == "bot").await["text"], HOURS);
}
