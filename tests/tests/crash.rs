//! Durable acknowledgements: under a load of concurrent commands, `kill -9` the writer and,
//! separately, the broker; afterwards every command that got a 2xx is on the log exactly
//! once, and nothing is on the log twice or half.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use system_tests::{OwnedBroker, TestSystem, eventually};
use tokio::sync::Mutex;

/// Clients submitting workflows until stopped; collects the event ids of 2xx answers.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<u64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(0));
        let http = reqwest::Client::builder()
            .default_headers(system_tests::auth::admin_headers())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, acknowledged, failures) = (
                    Arc::clone(&stop),
                    Arc::clone(&acknowledged),
                    Arc::clone(&failures),
                );
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    let body = json!({"name": "load", "steps": [{"id": "a", "kind": "llm"}]});
                    while !stop.load(Ordering::Relaxed) {
                        let reply = http
                            .post(format!("{url}/v1/workflows"))
                            .json(&body)
                            .send()
                            .await;
                        match reply {
                            Ok(reply) if reply.status().is_success() => {
                                let body: serde_json::Value = reply.json().await.unwrap();
                                let event_id = body["event_id"].as_str().unwrap().to_owned();
                                acknowledged.lock().await.push(event_id);
                            }
                            _ => {
                                *failures.lock().await += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            acknowledged,
            failures,
            tasks,
        }
    }

    async fn acknowledged_count(&self) -> usize {
        self.acknowledged.lock().await.len()
    }

    async fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acknowledged = self.acknowledged.lock().await.clone();
        let failures = *self.failures.lock().await;
        (acknowledged, failures)
    }
}

async fn wait_for_acks(load: &Load, at_least: usize) {
    let reached = eventually(Duration::from_secs(90), || async {
        (load.acknowledged_count().await >= at_least).then_some(())
    })
    .await;
    assert!(reached.is_some(), "the load made no progress");
}

/// Every acknowledged event is on the log exactly once, and so is every stored event.
async fn assert_exactly_once(system: &TestSystem, acknowledged: &[String]) {
    let drained = eventually(Duration::from_secs(60), || async {
        let unpublished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_store WHERE published_at IS NULL")
                .fetch_one(&system.pool)
                .await
                .unwrap();
        (unpublished == 0).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "the relay did not publish what was stored"
    );

    let mut on_log: HashMap<String, usize> = HashMap::new();
    for record in system.read_log().await {
        *on_log
            .entry(record.headers["event-id"].clone())
            .or_default() += 1;
    }
    let duplicated: Vec<_> = on_log.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "events on the log more than once: {duplicated:?}"
    );
    for event_id in acknowledged {
        assert_eq!(
            on_log.get(event_id),
            Some(&1),
            "acknowledged event {event_id} not on the log once"
        );
    }
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id::text FROM event_store")
        .fetch_all(&system.pool)
        .await
        .unwrap();
    assert_eq!(
        stored.len(),
        on_log.len(),
        "stored and logged events differ"
    );
    for event_id in stored {
        assert!(
            on_log.contains_key(&event_id),
            "stored event {event_id} never reached the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_killed_under_load_loses_and_duplicates_nothing_it_acknowledged() {
    let system = TestSystem::new(3).await;
    let mut writer = system.command_process().await;
    let load = Load::start(writer.url.clone(), 8);
    // Kills that landed inside an open relay batch: records the broker already holds
    // that the event store does not mark published yet (the relay dies between the two).
    let mut inside_a_batch = 0;
    let mut round = 0;
    while round < 3 || (inside_a_batch == 0 && round < 10) {
        round += 1;
        wait_for_acks(&load, round * 50).await;
        writer.kill();
        // Nothing writes now: the log and the store are as the kill left them.
        let marked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_store WHERE published_at IS NOT NULL")
                .fetch_one(&system.pool)
                .await
                .unwrap();
        if system.records_on_log().await > marked {
            inside_a_batch += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer.restart().await;
    }
    wait_for_acks(&load, (round + 1) * 50).await;
    let (acknowledged, failures) = load.finish().await;
    assert!(failures > 0, "the kills interrupted requests");
    assert!(
        inside_a_batch > 0,
        "none of {round} kills landed between a publish and its mark"
    );
    assert_exactly_once(&system, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_killed_under_load_loses_and_duplicates_nothing_acknowledged() {
    let mut broker = OwnedBroker::start().await;
    let system = TestSystem::with_brokers(broker.address.clone(), 3).await;
    let writer = system.command_process().await;
    let load = Load::start(writer.url.clone(), 8);
    wait_for_acks(&load, 50).await;
    broker.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.restart().await;
    let resumed = load.acknowledged_count().await + 50;
    wait_for_acks(&load, resumed).await;
    let (acknowledged, _) = load.finish().await;
    assert_exactly_once(&system, &acknowledged).await;
}
