//! `baton serve` runs its conversation workers on a runtime of their own (threads named
//! `baton::serve::WORKER_THREADS`), apart from the HTTP ingress, and stopping the server
//! takes those threads away. One test in its own binary: other servers' threads would be
//! counted too.

mod common;

use baton::serve::WORKER_THREADS;
use baton_tests::eventually;
use baton_tests::widget::WidgetClient;
use std::time::Duration;

/// CPU time so far of each of this process's threads named `name`, in nanoseconds
/// (`/proc/self/task/*/schedstat`, whose first field is the time spent running).
fn cpu_ns_of_threads(name: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        if let Some(ns) = schedstat.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.push(ns);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_worked_on_the_workers_threads_which_leave_with_the_server() {
    let hub = common::hub().await;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert_eq!(cpu_ns_of_threads(WORKER_THREADS).len(), cores, "one worker thread per core");
    let idle: u64 = cpu_ns_of_threads(WORKER_THREADS).iter().sum();

    let mut w = WidgetClient::start(&hub.base, "shop", None).await;
    for _ in 0..10 {
        w.send("What are your opening hours?").await;
        let answer = w.wait_for("the FAQ answer", |m| m["from"] == "bot").await;
        assert_eq!(answer["text"], "We are open 9-17 on weekdays.");
    }
    // Ten steps, each with its commit, its brain call and its send: milliseconds of CPU on
    // the workers' threads (a few microseconds when idle); none if they ran elsewhere.
    let worked: u64 = cpu_ns_of_threads(WORKER_THREADS).iter().sum();
    assert!(worked - idle > 2_000_000, "the workers' threads ran {} ns for ten steps", worked - idle);

    hub.running.stop().await;
    eventually(Duration::from_secs(10), "the workers' threads to end", || async {
        cpu_ns_of_threads(WORKER_THREADS).is_empty().then_some(())
    })
    .await;
}
