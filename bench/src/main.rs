//! `bench`: load benchmarks of the running system, each next to a raw baseline measured in
//! the same run on the same broker and database (see the README's Benchmarks section).
//!
//! `bench submit`: N concurrent clients submit workflows for T seconds; reports accepted
//! commands/s, latency p50/p99 and submit→visible-in-query p50/p99, next to N clients doing
//! raw rdkafka produces (idempotent, acks=all) of a record of the same size.
//!
//! `bench subscribe`: command 2xx → event received by a `graphql-ws` client subscribed to
//! `workflowEvents`, p50/p99, next to 2xx → visible to a client polling the REST API.
//! `bench execute`: the executor driving template workflows, next to the write path.
//! `bench llm`: `llm` steps against a 50 ms local model mock, overhead per call through the
//! executor next to direct reqwest calls, and steps/s with 100 concurrent runs.
//! `bench graphql`: N concurrent clients read pages of 100 workflows over GraphQL; reports
//! pages/s and latency p50/p99 next to the same page from the REST list endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use flowline_domain::{
    EventEnvelope, EventMetadata, SubmitWorkflow, WorkflowEvent, WorkflowSubmitted,
};
use flowline_event_log::{KafkaSettings, LogProducer, OutgoingRecord, partition_for};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use system_tests::TestSystem;
use uuid::Uuid;

mod execute;
mod llm;
mod mcp;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Benchmarks against raw baselines measured in the same run"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit workflows concurrently; compare with raw produce of same-size records.
    Submit {
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds each phase runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Partitions of the topics.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Every Nth submission, the client waits until the query service shows it.
        #[arg(long, default_value_t = 10)]
        visibility_every: u64,
        /// Measure the write path alone (no projectors, no visibility samples).
        #[arg(long)]
        write_only: bool,
    },
    /// Append throughput with two writer instances: many streams, then one hot stream.
    Append {
        /// Concurrent clients (split over the two writers).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds each phase runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Streams of the many-streams phase.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
    },
    /// Rebuild speed of the read model and the graph view from a long log, next to a
    /// PostgreSQL COPY of the same rows.
    Rebuild {
        /// Events on the log (runs of 1 submission and 3 signals).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Partitions of the topic.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Also read the log from the broker alone, and rebuild from it (slow on tansu).
        #[arg(long)]
        with_log: bool,
    },
    /// Delivery latency of GraphQL subscriptions (command 2xx → event at a graphql-ws
    /// client), next to a client polling the REST API for the same workflows.
    Subscribe {
        /// Commands per phase, one at a time.
        #[arg(long, default_value_t = 200)]
        commands: usize,
        /// Partitions of the topic.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
    },
    /// GraphQL reads: clients query pages of 100 workflows with their steps (and with
    /// events and graph fields), next to the same page from the REST list endpoint.
    Graphql {
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds each phase runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Workflow runs in the read model (4 events each).
        #[arg(long, default_value_t = 1_000)]
        runs: u64,
    },
    /// The executor driving 10-step template workflows to completion (runs/s, events/s,
    /// per-step scheduling overhead), next to the write path's own events/s.
    Execute {
        /// Runs in the backlog of the throughput phase.
        #[arg(long, default_value_t = 2_000)]
        runs: usize,
        /// Clients of the write-path baseline.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds of the baseline and of the latency phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// `mcp_tool` calls to server-everything through the executor (step time and
    /// submit → succeeded), next to direct rmcp calls and calls through the MCP port.
    Mcp {
        /// Measured direct calls and calls through the port.
        #[arg(long, default_value_t = 1_000)]
        calls: usize,
        /// Measured one-step runs through the executor, one at a time.
        #[arg(long, default_value_t = 200)]
        runs: usize,
    },
    /// `llm` steps against the local model mock (50 ms per call): per-call overhead through
    /// the executor next to direct reqwest calls, and steps/s with concurrent runs.
    Llm {
        /// Calls of the overhead phase (each way).
        #[arg(long, default_value_t = 200)]
        calls: usize,
        /// Concurrent runs of the throughput phase.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Seconds of the throughput phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Aggregate load time of a long stream, with and without a snapshot.
    Load {
        /// Events in the stream.
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        /// Events after the snapshot (a typical distance behind the head: half of the
        /// command service's default `SNAPSHOT_EVERY`).
        #[arg(long, default_value_t = 50)]
        behind: u64,
        /// Loads measured per variant.
        #[arg(long, default_value_t = 20)]
        repeats: usize,
    },
}

/// What a phase measured.
struct Measured {
    count: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    visible: Histogram<u64>,
}

impl Measured {
    fn new() -> Self {
        Self {
            count: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            visible: histogram(),
        }
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Every measured phase first runs its operation this long unmeasured (connections, leader
/// election, consumer group joins, caches), so no phase pays for a start-up another skipped.
const WARM_UP: Duration = Duration::from_secs(2);

/// Runs `clients` loops of `operation` for `WARM_UP` and then `duration` (measured); each
/// call's latency is timed here and it may return a latency of its own that it measured
/// (submit → visible, say).
async fn run_clients<F, Fut>(
    clients: usize,
    duration: Duration,
    operation: F,
) -> anyhow::Result<Measured>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Option<Duration>>> + Send,
{
    let operation = Arc::new(operation);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let operation = Arc::clone(&operation);
        let stop = Arc::clone(&stop);
        let measuring = Arc::clone(&measuring);
        tasks.push(tokio::spawn(async move {
            let mut measured = Measured::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let counted = measuring.load(Ordering::Relaxed);
                let begun = Instant::now();
                let own = operation(client as u64 * 1_000_000 + n).await?;
                n += 1;
                if !counted || stop.load(Ordering::Relaxed) {
                    continue;
                }
                measured
                    .latency
                    .record(begun.elapsed().as_micros().max(1) as u64)?;
                if let Some(own) = own {
                    measured.visible.record(own.as_micros().max(1) as u64)?;
                }
                measured.count += 1;
            }
            anyhow::Ok(measured)
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut total = Measured::new();
    for task in tasks {
        let measured = task.await??;
        total.count += measured.count;
        total.latency.add(measured.latency)?;
        total.visible.add(measured.visible)?;
    }
    total.elapsed = elapsed;
    Ok(total)
}

/// Most calls a paced phase lets run at once before it stops issuing (a system that cannot
/// keep up shows as latency, not as an unbounded pile of tasks).
const PACED_IN_FLIGHT: usize = 256;

/// Issues `operation` at a steady `rate` per second (open loop) for `WARM_UP` and then
/// `duration`. A call's latency counts from when it was due, not from when it started, so a
/// stall shows in the latency of every call it delayed.
async fn run_paced<F, Fut>(rate: f64, duration: Duration, operation: F) -> anyhow::Result<Measured>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Option<Duration>>> + Send + 'static,
{
    let operation = Arc::new(operation);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let begin = Instant::now();
    let measure_from = begin + WARM_UP;
    let end = measure_from + duration;
    let mut calls = tokio::task::JoinSet::new();
    let mut total = Measured::new();
    let mut n = 0u64;
    loop {
        let due = ticker.tick().await.into_std();
        if due >= end {
            break;
        }
        while calls.len() >= PACED_IN_FLIGHT {
            if let Some(latency) = calls.join_next().await {
                record_paced(&mut total, latency??)?;
            }
        }
        let operation = Arc::clone(&operation);
        let counted = due >= measure_from;
        calls.spawn(async move {
            operation(n).await?;
            anyhow::Ok(counted.then(|| due.elapsed()))
        });
        n += 1;
    }
    while let Some(latency) = calls.join_next().await {
        record_paced(&mut total, latency??)?;
    }
    total.elapsed = duration;
    Ok(total)
}

fn record_paced(total: &mut Measured, latency: Option<Duration>) -> anyhow::Result<()> {
    if let Some(latency) = latency {
        total.latency.record(latency.as_micros().max(1) as u64)?;
        total.count += 1;
    }
    Ok(())
}

fn workflow_body() -> Value {
    json!({
        "name": "bench",
        "input": {"topic": "throughput"},
        "steps": [
            {"id": "fetch", "kind": "http", "depends_on": []},
            {"id": "summarize", "kind": "llm", "depends_on": ["fetch"]}
        ]
    })
}

/// Submits the benchmark's workflow and returns the 2xx body.
async fn submit_workflow(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(http
        .post(url)
        .json(&workflow_body())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// A record exactly as the relay put one submission on the log: the raw baselines produce
/// copies of it (a fresh stream-id key, the same headers and payload), so they differ from
/// the system only in what the system does around the produce.
struct LogShape {
    headers: Vec<(String, Vec<u8>)>,
    payload: Vec<u8>,
}

impl LogShape {
    /// Submits one workflow through `command_url` and reads its record back from the log.
    async fn of_submission(system: &TestSystem, command_url: &str) -> anyhow::Result<Self> {
        submit_workflow(
            &system_tests::client(),
            &format!("{command_url}/v1/workflows"),
        )
        .await?;
        let record = system
            .read_log()
            .await
            .into_iter()
            .next()
            .context("the submission's record on the log")?;
        Ok(Self {
            headers: record
                .headers
                .into_iter()
                .map(|(name, value)| (name, value.into_bytes()))
                .collect(),
            payload: record.payload,
        })
    }

    fn bytes(&self) -> usize {
        self.payload.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }
}

/// A topic of its own on the system's broker and a durable producer: what the raw baselines
/// produce to.
async fn raw_baseline(system: &TestSystem) -> anyhow::Result<(KafkaSettings, Arc<LogProducer>)> {
    let settings = KafkaSettings {
        topic: format!("bench-raw-{}", Uuid::new_v4().simple()),
        ..system.kafka.clone()
    };
    flowline_event_log::ensure_topic(&settings).await?;
    let producer = Arc::new(LogProducer::new(&settings)?);
    Ok((settings, producer))
}

/// One durable produce of a copy of `shape` under a fresh stream key, awaiting its
/// acknowledgement.
fn raw_produce(
    partitions: i32,
    producer: &Arc<LogProducer>,
    shape: &Arc<LogShape>,
) -> impl Fn(u64) -> futures::future::BoxFuture<'static, anyhow::Result<Option<Duration>>>
+ Send
+ Sync
+ 'static {
    let producer = Arc::clone(producer);
    let shape = Arc::clone(shape);
    move |_| {
        let producer = Arc::clone(&producer);
        let shape = Arc::clone(&shape);
        Box::pin(async move {
            let key = Uuid::now_v7().to_string().into_bytes();
            let record = OutgoingRecord {
                partition: partition_for(&key, partitions),
                key,
                payload: shape.payload.clone(),
                headers: shape.headers.clone(),
            };
            producer.publish(&[record]).await?;
            Ok(None)
        })
    }
}

/// Latency of a command phase, for the half-peak rows.
fn latency_row(label: &str, measured: &Measured) {
    println!(
        "{:<40} {:>10.0} {:>9.2} {:>9.2}",
        label,
        measured.rate(),
        ms(&measured.latency, 0.5),
        ms(&measured.latency, 0.99)
    );
}

async fn submit(
    clients: usize,
    seconds: u64,
    partitions: i32,
    visibility_every: u64,
    write_only: bool,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    let system = TestSystem::new(partitions).await;
    // The command service first, idle during the raw phases: it puts the record whose
    // shape the raw baselines copy.
    let commands = system.command_service().await;
    let shape = Arc::new(LogShape::of_submission(&system, &commands.url).await?);

    // Baseline: the same clients doing raw, durable produces of the same record.
    let (raw_settings, producer) = raw_baseline(&system).await?;
    let raw = run_clients(
        clients,
        duration,
        raw_produce(partitions, &producer, &shape),
    )
    .await?;
    let raw_half = run_paced(
        raw.rate() / 2.0,
        duration,
        raw_produce(partitions, &producer, &shape),
    )
    .await?;
    // The same, while a consumer tails the topic as the projectors do: on tansu a tailing
    // fetch slows produces down, so this is the fair baseline for the whole system.
    let tailing = Arc::new(AtomicBool::new(true));
    let tail = {
        let tailing = Arc::clone(&tailing);
        let mut config = flowline_event_log::consumer_config(
            &raw_settings.brokers,
            &format!("bench-tail-{}", Uuid::new_v4()),
        );
        config.set("auto.offset.reset", "latest");
        let topic = raw_settings.topic.clone();
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let consumer: rdkafka::consumer::BaseConsumer = config.create()?;
            rdkafka::consumer::Consumer::subscribe(&consumer, &[&topic])?;
            let mut seen = 0;
            while tailing.load(Ordering::Relaxed) {
                if let Some(Ok(_)) = consumer.poll(Duration::from_millis(50)) {
                    seen += 1;
                }
            }
            Ok(seen)
        })
    };
    let raw_tailed = run_clients(
        clients,
        duration,
        raw_produce(partitions, &producer, &shape),
    )
    .await?;
    tailing.store(false, Ordering::Relaxed);
    let _ = tail.join();

    let queries = system.query_service().await;
    let projectors = if write_only {
        None
    } else {
        Some(system.projectors().await)
    };
    let http = system_tests::client();
    let submit_url = format!("{}/v1/workflows", commands.url);
    // Submit → visible is sampled beside the clients, not by them: a client's command
    // latency and rate do not include polling the query service.
    let visible = Arc::new(std::sync::Mutex::new(histogram()));
    let submitting = {
        let (http, submit_url, query_url) = (http.clone(), submit_url.clone(), queries.url.clone());
        let visible = Arc::clone(&visible);
        let sample_every = if write_only { 0 } else { visibility_every };
        move |n: u64| {
            let (http, submit_url, query_url) =
                (http.clone(), submit_url.clone(), query_url.clone());
            let visible = Arc::clone(&visible);
            async move {
                let reply = submit_workflow(&http, &submit_url).await?;
                if sample_every != 0 && n.is_multiple_of(sample_every) {
                    let id = reply["workflow_id"]
                        .as_str()
                        .context("workflow_id")?
                        .to_owned();
                    tokio::spawn(async move {
                        if let Ok(seen) = time_to_visible(&http, &query_url, &id).await {
                            let _ = visible
                                .lock()
                                .expect("visibility histogram")
                                .record(seen.as_micros().max(1) as u64);
                        }
                    });
                }
                Ok(None)
            }
        }
    };
    let submitting = Arc::new(submitting);
    let peak = {
        let submitting = Arc::clone(&submitting);
        run_clients(clients, duration, move |n| submitting(n)).await?
    };
    let visible_at_peak = std::mem::replace(&mut *visible.lock().expect("histogram"), histogram());
    let half = {
        let submitting = Arc::clone(&submitting);
        run_paced(peak.rate() / 2.0, duration, move |n| submitting(n)).await?
    };
    // Let the last visibility samples land.
    tokio::time::sleep(Duration::from_secs(1)).await;

    if let Some(projectors) = projectors {
        projectors.stop().await;
    }
    commands.stop().await;
    queries.stop().await;
    println!(
        "bench submit: {clients} clients, {seconds} s per phase after {} s of warm-up, {partitions} partitions, record {} bytes with headers",
        WARM_UP.as_secs(),
        shape.bytes()
    );
    println!("{:<40} {:>10} {:>9} {:>9}", "", "ops/s", "p50 ms", "p99 ms");
    latency_row("raw rdkafka produce (baseline)", &raw);
    latency_row("  at half its peak rate", &raw_half);
    latency_row("raw produce, consumer tailing", &raw_tailed);
    latency_row("POST /v1/workflows (201 on log)", &peak);
    latency_row("  at half its peak rate", &half);
    if !write_only {
        println!(
            "{:<40} {:>10} {:>9.2} {:>9.2}   ({} samples at peak)",
            "submit 201 → visible in query-service",
            "",
            ms(&visible_at_peak, 0.5),
            ms(&visible_at_peak, 0.99),
            visible_at_peak.len()
        );
    }
    println!(
        "accepted commands/s ÷ raw produce/s = {:.2}",
        peak.rate() / raw.rate()
    );
    if !write_only {
        println!(
            "accepted commands/s ÷ raw produce/s with a tailing consumer = {:.2}",
            peak.rate() / raw_tailed.rate()
        );
    }
    println!(
        "command p99 at half peak ÷ raw produce p99 at half its peak = {:.2} (goal: command p99 < 10 ms at half peak)",
        ms(&half.latency, 0.99) / ms(&raw_half.latency, 0.99)
    );
    Ok(())
}

/// Polls the query service until the workflow is readable; the time from the 201.
async fn time_to_visible(
    http: &reqwest::Client,
    query_url: &str,
    id: &str,
) -> anyhow::Result<Duration> {
    let accepted = Instant::now();
    loop {
        let status = http
            .get(format!("{query_url}/v1/workflows/{id}"))
            .send()
            .await?
            .status();
        if status.is_success() {
            return Ok(accepted.elapsed());
        }
        if accepted.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("workflow {id} not visible after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn report_row(label: &str, measured: &Measured) -> f64 {
    latency_row(label, measured);
    measured.rate()
}

async fn append(clients: usize, seconds: u64, streams: usize) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    let partitions = 3;
    let system = TestSystem::new(partitions).await;
    let writers = [
        system.command_service().await,
        system.command_service().await,
    ];
    let shape = Arc::new(LogShape::of_submission(&system, &writers[0].url).await?);
    let (_, producer) = raw_baseline(&system).await?;
    let raw = run_clients(
        clients,
        duration,
        raw_produce(partitions, &producer, &shape),
    )
    .await?;

    let urls: Arc<Vec<String>> = Arc::new(writers.iter().map(|w| w.url.clone()).collect());
    let http = system_tests::client();
    let mut ids = Vec::with_capacity(streams);
    for n in 0..streams {
        let reply = submit_workflow(&http, &format!("{}/v1/workflows", urls[n % 2])).await?;
        ids.push(
            reply["workflow_id"]
                .as_str()
                .context("workflow_id")?
                .to_owned(),
        );
    }
    let ids = Arc::new(ids);
    let signal = move |urls: Arc<Vec<String>>, ids: Arc<Vec<String>>, hot: bool| {
        let http = http.clone();
        move |n: u64| {
            let (http, urls, ids) = (http.clone(), Arc::clone(&urls), Arc::clone(&ids));
            async move {
                let id = if hot {
                    &ids[0]
                } else {
                    &ids[rand::random_range(0..ids.len())]
                };
                http.post(format!(
                    "{}/v1/workflows/{id}/signals/tick",
                    urls[(n % 2) as usize]
                ))
                .json(&json!({"n": n}))
                .send()
                .await?
                .error_for_status()?;
                Ok(None)
            }
        }
    };
    let many = run_clients(
        clients,
        duration,
        signal(Arc::clone(&urls), Arc::clone(&ids), false),
    )
    .await?;
    let hot = run_clients(
        clients,
        duration,
        signal(Arc::clone(&urls), Arc::clone(&ids), true),
    )
    .await?;
    for writer in writers {
        writer.stop().await;
    }

    println!(
        "bench append: {clients} clients over 2 writer instances, {seconds} s per phase, {partitions} partitions"
    );
    println!("{:<40} {:>10} {:>9} {:>9}", "", "ops/s", "p50 ms", "p99 ms");
    let raw_rate = report_row("raw rdkafka produce (baseline)", &raw);
    let many_rate = report_row(&format!("signals to {streams} streams"), &many);
    let hot_rate = report_row("signals to one hot stream", &hot);
    println!("many streams ÷ raw produce = {:.2}", many_rate / raw_rate);
    println!("one hot stream ÷ raw produce = {:.2}", hot_rate / raw_rate);
    Ok(())
}

async fn load(events: u64, behind: u64, repeats: usize) -> anyhow::Result<()> {
    use flowline_domain::{SignalReceived, Versioned, Workflow};
    use flowline_event_store::{EventStore, WorkflowRepository};

    let system = TestSystem::new(1).await;
    let store = EventStore::new(system.pool.clone());
    let stream_id = Uuid::now_v7();
    let mut envelope = EventEnvelope {
        metadata: EventMetadata {
            event_id: Uuid::now_v7(),
            tenant: "default".into(),
            stream_id,
            stream_version: 1,
            occurred_at: chrono::Utc::now(),
            command_id: Uuid::now_v7(),
            correlation_id: stream_id,
            causation_id: stream_id,
            traceparent: None,
            tracestate: None,
        },
        event: WorkflowEvent::Submitted(
            serde_json::from_value::<SubmitWorkflow>(workflow_body())?.validate()?,
        ),
    };
    // Snapshots are taken every SNAPSHOT_EVERY events, so a load finds the newest one some
    // events behind the head (half the interval on average): the measured load starts from
    // a snapshot `behind` events back, not from one at the head.
    let snapshot_at = events.saturating_sub(behind).max(1);
    let with_snapshots = WorkflowRepository::new(store.clone(), system.pool.clone(), snapshot_at);
    let mut state = Versioned::<Workflow>::default();
    let mut at_snapshot = None;
    for version in 1..=events {
        envelope.metadata.stream_version = version;
        envelope.metadata.event_id = Uuid::now_v7();
        envelope.metadata.command_id = Uuid::now_v7();
        store.append(&envelope, None).await?;
        state.apply(&envelope.event);
        if version == snapshot_at {
            at_snapshot = Some(state.clone());
        }
        envelope.event = WorkflowEvent::SignalReceived(SignalReceived {
            name: "tick".into(),
            payload: json!({"n": version}),
        });
    }

    // Each variant loads once unmeasured first (connections, PostgreSQL's caches).
    let time = |repository: WorkflowRepository| async move {
        repository.load("default", stream_id).await?;
        let mut histogram = histogram();
        for _ in 0..repeats {
            let started = Instant::now();
            let loaded = repository.load("default", stream_id).await?;
            histogram.record(started.elapsed().as_micros().max(1) as u64)?;
            anyhow::ensure!(
                loaded.version == events,
                "loaded version {}",
                loaded.version
            );
        }
        anyhow::Ok(histogram)
    };
    let raw = {
        let mut histogram = histogram();
        for repeat in 0..=repeats {
            let started = Instant::now();
            let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
                "SELECT payload FROM event_store WHERE stream_id = $1 ORDER BY stream_version",
            )
            .bind(stream_id)
            .fetch_all(&system.pool)
            .await?;
            anyhow::ensure!(rows.len() as u64 == events);
            if repeat > 0 {
                histogram.record(started.elapsed().as_micros().max(1) as u64)?;
            }
        }
        histogram
    };
    let without = time(WorkflowRepository::new(
        store.clone(),
        system.pool.clone(),
        0,
    ))
    .await?;
    // Written only now, so that the replay above read every event.
    with_snapshots
        .after_append(
            "default",
            stream_id,
            &at_snapshot.context("the state at the snapshot's version")?,
        )
        .await;
    let with = time(with_snapshots).await?;

    println!(
        "bench load: one stream of {events} events, {repeats} loads each after one unmeasured, snapshot {behind} events behind the head"
    );
    println!("{:<44} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!(
        "{:<44} {:>9.2} {:>9.2}",
        "raw SELECT of the payloads (baseline)",
        ms(&raw, 0.5),
        ms(&raw, 0.99)
    );
    println!(
        "{:<44} {:>9.2} {:>9.2}",
        "load, replaying every event",
        ms(&without, 0.5),
        ms(&without, 0.99)
    );
    println!(
        "{:<44} {:>9.2} {:>9.2}",
        "load from the snapshot, then the rest",
        ms(&with, 0.5),
        ms(&with, 0.99)
    );
    println!(
        "replay ÷ raw select = {:.2}; snapshot ÷ replay = {:.3}",
        ms(&without, 0.5) / ms(&raw, 0.5),
        ms(&with, 0.5) / ms(&without, 0.5)
    );
    println!(
        "load from the snapshot: p99 {:.2} ms (goal < 5 ms for 10 000 events), p99 ÷ raw select p99 = {:.3}",
        ms(&with, 0.99),
        ms(&with, 0.99) / ms(&raw, 0.99)
    );
    Ok(())
}

/// The `version`th event of a bench run (one submission, then signals).
fn bench_event(stream: Uuid, version: u64, submitted: &WorkflowSubmitted) -> EventEnvelope {
    use flowline_domain::SignalReceived;
    let id = Uuid::now_v7();
    EventEnvelope {
        metadata: EventMetadata {
            event_id: id,
            tenant: "default".into(),
            stream_id: stream,
            stream_version: version,
            occurred_at: chrono::Utc::now(),
            command_id: id,
            correlation_id: stream,
            causation_id: id,
            traceparent: None,
            tracestate: None,
        },
        event: if version == 1 {
            WorkflowEvent::Submitted(submitted.clone())
        } else {
            WorkflowEvent::SignalReceived(SignalReceived {
                name: "tick".into(),
                payload: json!({"n": version}),
            })
        },
    }
}

/// The two-step workflow every bench run submits.
fn bench_submission() -> anyhow::Result<WorkflowSubmitted> {
    let body = json!({
        "name": "bench",
        "steps": [
            {"id": "search", "kind": "mcp_tool", "config": {"server": "web", "tool": "search"}},
            {"id": "summarize", "kind": "llm", "depends_on": ["search"], "config": {"model": "gpt-x"}}
        ]
    });
    Ok(serde_json::from_value::<SubmitWorkflow>(body)?.validate()?)
}

/// Puts `events` events on the log directly (runs of one submission and three signals),
/// produced in large pipelined batches: a read model to query, without the write path.
async fn fill_log(system: &TestSystem, events: u64, partitions: i32) -> anyhow::Result<()> {
    let codec = flowline_schemas::EventCodec::default();
    let producer = LogProducer::new(&system.kafka)?;
    let submitted = bench_submission()?;
    let mut records = Vec::with_capacity(10_000);
    let mut stream = Uuid::now_v7();
    for produced in 0..events {
        let version = produced % 4 + 1;
        if version == 1 {
            stream = Uuid::now_v7();
        }
        let envelope = bench_event(stream, version, &submitted);
        let key = stream.to_string().into_bytes();
        records.push(OutgoingRecord {
            partition: partition_for(&key, partitions),
            key,
            payload: codec.encode(&envelope)?.payload,
            headers: vec![],
        });
        if records.len() == 10_000 || produced + 1 == events {
            producer.publish(&records).await?;
            records.clear();
        }
    }
    Ok(())
}

/// Appends `events` events through the event store, as the command service does (16
/// writers, runs of one submission and three signals, hash chained), while the outbox
/// relay publishes them with their headers; returns once every one is on the log.
async fn fill_store_and_log(system: &TestSystem, events: u64) -> anyhow::Result<()> {
    use flowline_event_store::{EventStore, OutboxRelay, RelayConfig};
    use std::sync::atomic::AtomicU64;
    let relay = OutboxRelay::new(
        system.pool.clone(),
        system.kafka.clone(),
        RelayConfig::default(),
    );
    let store = EventStore::with_waker(system.pool.clone(), relay.waker());
    let stop = tokio_util::sync::CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(stop.clone()));
    let submitted = Arc::new(bench_submission()?);
    let next_run = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let (store, submitted, next_run) = (store.clone(), submitted.clone(), next_run.clone());
            tokio::spawn(async move {
                loop {
                    let run = next_run.fetch_add(1, Ordering::Relaxed);
                    if run * 4 >= events {
                        return anyhow::Ok(());
                    }
                    let stream = Uuid::now_v7();
                    for version in 1..=(events - run * 4).min(4) {
                        store
                            .append(&bench_event(stream, version, &submitted), None)
                            .await?;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    loop {
        let unpublished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_store WHERE published_at IS NULL")
                .fetch_one(&system.pool)
                .await?;
        if unpublished == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    relay_task.await?;
    Ok(())
}

/// Rebuilds `projection` from the beginning and returns how long it took.
async fn time_rebuild(
    system: &TestSystem,
    projection: &'static str,
    from_event_store: bool,
) -> anyhow::Result<Duration> {
    use projectors::rebuild::{self, RebuildSettings, StartAt};
    let (record, _) =
        rebuild::start(&system.pool, &system.kafka, projection, StartAt::Beginning).await?;
    let settings = RebuildSettings {
        database_url: system.database_url.clone(),
        pool: system.pool.clone(),
        kafka: system.kafka.clone(),
        batch_size: 10_000,
        grace: Duration::from_secs(3600),
        dead_letters: projectors::runner::dead_letter_producer(&system.kafka).await?,
        history: from_event_store.then(|| published_history(system)),
    };
    let runtime = tokio::runtime::Handle::current();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        rebuild::run(
            settings,
            record,
            runtime,
            tokio_util::sync::CancellationToken::new(),
            |_| {},
        )
    })
    .await??;
    Ok(started.elapsed())
}

/// COPYs `tables` out and back into empty copies (with their indexes); returns the time of
/// the COPY IN and the rows copied.
async fn time_copy(system: &TestSystem, tables: &[&str]) -> anyhow::Result<(Duration, u64)> {
    use futures::TryStreamExt;
    let mut connection = system.pool.acquire().await?;
    let mut dumps = Vec::new();
    for table in tables {
        let data: Vec<bytes::Bytes> = connection
            .copy_out_raw(&format!("COPY {table} TO STDOUT"))
            .await?
            .try_collect()
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE copy_{table} (LIKE {table} INCLUDING ALL)"
        )))
        .execute(&mut *connection)
        .await?;
        dumps.push((table, data));
    }
    let started = Instant::now();
    let mut rows = 0;
    for (table, data) in dumps {
        let mut copy = connection
            .copy_in_raw(&format!("COPY copy_{table} FROM STDIN"))
            .await?;
        for chunk in data {
            copy.send(chunk).await?;
        }
        rows += copy.finish().await?;
    }
    Ok((started.elapsed(), rows))
}

/// Reads and decodes the whole published history from the event store, partition by
/// partition in offset order, as a rebuild does.
async fn read_history(
    system: &TestSystem,
    partitions: i32,
) -> anyhow::Result<Vec<(EventEnvelope, projectors::projection::LogPlace)>> {
    let history = published_history(system);
    let codec = flowline_schemas::EventCodec::default();
    let mut log = Vec::new();
    for partition in 0..partitions {
        let mut next = 0;
        loop {
            let records = history.read(partition, next..next + 10_000).await?;
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for record in records {
                let place = projectors::projection::LogPlace {
                    partition,
                    offset: record.offset,
                };
                log.push((
                    codec.decode(record.payload.as_deref().unwrap_or_default())?,
                    place,
                ));
            }
        }
    }
    Ok(log)
}

/// Applies decoded events straight from memory into empty copies of a projection's tables,
/// in batches of 10 000: the projection's own speed, without the broker.
async fn time_apply_only(
    system: &TestSystem,
    log: &[(EventEnvelope, projectors::projection::LogPlace)],
    projection: &str,
    tables: &[&str],
) -> anyhow::Result<Duration> {
    use projectors::projection::Projection;
    let schema = format!("bench_{}", Uuid::new_v4().simple());
    let mut ddl = format!("CREATE SCHEMA {schema};");
    for table in tables {
        ddl.push_str(&format!(
            "CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL);"
        ));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&system.pool)
        .await?;
    let options =
        <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&system.database_url)?
            .options([("search_path", format!("{schema},public"))]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await?;
    let graph = projectors::workflow_graph::WorkflowGraph::new(flowline_graph::AnyGraph::Postgres(
        flowline_graph::PostgresGraph::new(pool.clone()),
    ));
    let started = Instant::now();
    for chunk in log.chunks(10_000) {
        let mut transaction = pool.begin().await?;
        if projection == projectors::workflow_graph::NAME {
            graph.apply_all(&mut transaction, chunk).await?;
        } else {
            projectors::workflow_read_model::WorkflowReadModel::shadow()
                .apply_all(&mut transaction, chunk)
                .await?;
        }
        transaction.commit().await?;
    }
    Ok(started.elapsed())
}

/// Reads and decodes the whole log without writing anything: the ceiling any rebuild on
/// this broker can reach.
async fn time_consume(system: &TestSystem, events: u64) -> anyhow::Result<Duration> {
    let kafka = system.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let codec = flowline_schemas::EventCodec::default();
        let config = flowline_event_log::consumer_config(
            &kafka.brokers,
            &format!("bench-{}", Uuid::new_v4()),
        );
        let consumer = flowline_event_log::PartitionConsumer::new(&config, &kafka.topic)?;
        let partitions = flowline_event_log::topic_partitions(&kafka.brokers, &kafka.topic)?;
        consumer.assign(&(0..partitions).map(|p| (p, None)).collect())?;
        let started = Instant::now();
        let mut seen = 0u64;
        while seen < events {
            for record in consumer.poll_batch(10_000, Duration::from_millis(100))? {
                codec.decode(rdkafka::Message::payload(&record).unwrap_or_default())?;
                seen += 1;
            }
        }
        anyhow::Ok(started.elapsed())
    })
    .await?
}

async fn rebuild(events: u64, partitions: i32, with_log: bool) -> anyhow::Result<()> {
    let system = TestSystem::new(partitions).await;
    let filling = Instant::now();
    fill_store_and_log(&system, events).await?;
    let fill_time = filling.elapsed();
    println!(
        "bench rebuild: {events} events on {partitions} partitions, appended through the event store and published by the relay in {:.1} s",
        fill_time.as_secs_f64()
    );
    let reading = Instant::now();
    let log = read_history(&system, partitions).await?;
    let read = reading.elapsed();
    anyhow::ensure!(
        log.len() as u64 == events,
        "history holds {} events",
        log.len()
    );
    println!(
        "read + decode the history from the event store, nothing written: {:.1} s, {:.0} events/s",
        read.as_secs_f64(),
        events as f64 / read.as_secs_f64()
    );
    if with_log {
        let consumed = time_consume(&system, events).await?;
        println!(
            "read + decode the log from the broker, nothing written: {:.1} s, {:.0} events/s",
            consumed.as_secs_f64(),
            events as f64 / consumed.as_secs_f64()
        );
    }
    println!(
        "{:<52} {:>8} {:>10} {:>13} {:>6}",
        "", "seconds", "events/s", "COPY seconds", "ratio"
    );
    for projection in [
        projectors::workflow_read_model::NAME,
        projectors::workflow_graph::NAME,
    ] {
        // The tables a rebuild of it writes, as the rebuild itself knows them.
        let tables = projectors::rebuild::tables_of(projection).context("a projection")?;
        let took = time_rebuild(&system, projection, true).await?;
        let (copy, rows) = time_copy(&system, tables).await?;
        let mut runs = vec![(format!("{projection} rebuild"), took)];
        if with_log {
            let from_log = time_rebuild(&system, projection, false).await?;
            runs.push((format!("{projection} rebuild, log only"), from_log));
        }
        let applied = time_apply_only(&system, &log, projection, tables).await?;
        runs.push((format!("{projection} apply only (from memory)"), applied));
        for (label, took) in runs {
            let seconds = took.as_secs_f64();
            println!(
                "{:<52} {:>8.1} {:>10.0} {:>13.1} {:>6.2}   ({rows} rows)",
                label,
                seconds,
                events as f64 / seconds,
                copy.as_secs_f64(),
                copy.as_secs_f64() / seconds
            );
        }
    }
    println!("ratio = COPY time of the rows the rebuild wrote ÷ rebuild time (goal ≥ 0.5)");
    Ok(())
}

/// One command at a time: its 2xx → a `graphql-ws` client (Node, from npm) receives its
/// event; then the same with a client polling `GET /v1/workflows/{id}` every millisecond.
async fn subscribe(commands: usize, partitions: i32) -> anyhow::Result<()> {
    let system = TestSystem::new(partitions).await;
    let command_service = system.command_service().await;
    let query_service = system.query_service().await;
    let _projectors = system.projectors().await;
    let http = system_tests::client();
    let submit_url = format!("{}/v1/workflows", command_service.url);

    let mut client = system_tests::js_clients::JsSubscription::start(&json!({
        "url": format!("{}/graphql/ws", query_service.url.replacen("http://", "ws://", 1)),
        "query": "subscription { workflowEvents(filter: {types: [\"WorkflowSubmitted\"]}, after: \"\") { workflowId } }",
        "connectionParams": {"tenant": "default"},
    }));
    // Warm-up, which also makes sure the subscription is live before measuring.
    let warm_up = submit_workflow(&http, &submit_url).await?;
    let _ = client.next_data().await;
    anyhow::ensure!(!warm_up["workflow_id"].is_null(), "no workflow id");

    let mut pushed = histogram();
    for _ in 0..commands {
        let reply = submit_workflow(&http, &submit_url).await?;
        let accepted = Instant::now();
        let id = reply["workflow_id"]
            .as_str()
            .context("workflow_id")?
            .to_owned();
        let data = client.next_data().await;
        anyhow::ensure!(
            data["workflowEvents"]["workflowId"] == id,
            "events out of order: {data}"
        );
        pushed.record(accepted.elapsed().as_micros().max(1) as u64)?;
    }

    let mut polled = histogram();
    for _ in 0..commands {
        let reply = submit_workflow(&http, &submit_url).await?;
        let accepted = Instant::now();
        let id = reply["workflow_id"].as_str().context("workflow_id")?;
        let url = format!("{}/v1/workflows/{id}", query_service.url);
        while !http.get(&url).send().await?.status().is_success() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        polled.record(accepted.elapsed().as_micros().max(1) as u64)?;
    }

    println!("{commands} commands, one at a time, {partitions} partitions");
    println!("{:<44} {:>9} {:>9}", "2xx → seen", "p50 ms", "p99 ms");
    for (label, histogram) in [
        ("graphql-ws subscription (workflowEvents)", &pushed),
        ("REST polling every 1 ms (baseline)", &polled),
    ] {
        println!(
            "{label:<44} {:>9.2} {:>9.2}",
            ms(histogram, 0.5),
            ms(histogram, 0.99)
        );
    }
    println!(
        "ratio p50 subscription ÷ polling = {:.2}",
        ms(&pushed, 0.5) / ms(&polled, 0.5)
    );
    Ok(())
}

/// Pages of 100 workflows over REST and GraphQL, from a read model built from `runs` runs.
async fn graphql(clients: usize, seconds: u64, runs: u64) -> anyhow::Result<()> {
    let system = TestSystem::new(3).await;
    fill_log(&system, runs * 4, 3).await?;
    time_rebuild(&system, projectors::workflow_read_model::NAME, false).await?;
    time_rebuild(&system, projectors::workflow_graph::NAME, false).await?;
    let queries = system.query_service().await;
    let rest_url = format!("{}/v1/workflows?limit=100", queries.url);
    let graphql_url = format!("{}/graphql", queries.url);
    println!(
        "bench graphql: {runs} runs, {clients} clients, {seconds} s per phase, pages of 100 workflows"
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9}",
        "", "pages/s", "p50 ms", "p99 ms"
    );
    let http = system_tests::client();
    let duration = Duration::from_secs(seconds);
    let rest = {
        let http = http.clone();
        run_clients(clients, duration, move |_| {
            let request = http.get(&rest_url);
            async move {
                let page: Value = request.send().await?.error_for_status()?.json().await?;
                anyhow::ensure!(page["items"].as_array().map(Vec::len) == Some(100));
                Ok(None)
            }
        })
        .await?
    };
    let rest_rate = report_row("REST list (steps inline)", &rest);
    for (label, query) in [
        (
            "GraphQL workflows + steps",
            "{ workflows(first: 100) { edges { cursor node { id name status version              steps { id kind status dependsOn } } } pageInfo { hasNextPage endCursor } } }",
        ),
        (
            "GraphQL + events + runsUsingSameTools",
            "{ workflows(first: 100) { edges { node { id name status              steps { id status dependents { id } } events { version type }              runsUsingSameTools(first: 5) { id } } } pageInfo { hasNextPage } } }",
        ),
    ] {
        let http = http.clone();
        let url = graphql_url.clone();
        let body = json!({ "query": query });
        let measured = run_clients(clients, duration, move |_| {
            let request = http.post(&url).json(&body);
            async move {
                let reply: Value = request.send().await?.error_for_status()?.json().await?;
                anyhow::ensure!(reply["errors"].is_null(), "{}", reply["errors"]);
                anyhow::ensure!(
                    reply["data"]["workflows"]["edges"].as_array().map(Vec::len) == Some(100)
                );
                Ok(None)
            }
        })
        .await?;
        let rate = report_row(label, &measured);
        println!("{:<40} {:>10.2}", "  ÷ REST pages/s", rate / rest_rate);
    }
    queries.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flowline_service_kit::telemetry::init("bench");
    match Args::parse().command {
        Command::Submit {
            clients,
            seconds,
            partitions,
            visibility_every,
            write_only,
        } => {
            submit(
                clients,
                seconds,
                partitions,
                visibility_every.max(1),
                write_only,
            )
            .await
        }
        Command::Append {
            clients,
            seconds,
            streams,
        } => append(clients, seconds, streams).await,
        Command::Load {
            events,
            behind,
            repeats,
        } => load(events, behind, repeats).await,
        Command::Execute {
            runs,
            clients,
            seconds,
        } => execute::execute(runs, clients, seconds).await,
        Command::Llm {
            calls,
            concurrency,
            seconds,
        } => llm::llm(calls, concurrency, seconds).await,
        Command::Subscribe {
            commands,
            partitions,
        } => subscribe(commands, partitions).await,
        Command::Mcp { calls, runs } => mcp::mcp(calls, runs).await,
        Command::Graphql {
            clients,
            seconds,
            runs,
        } => graphql(clients, seconds, runs).await,
        Command::Rebuild {
            events,
            partitions,
            with_log,
        } => rebuild(events, partitions, with_log).await,
    }
}

/// The bench log's history as the event store holds it.
fn published_history(system: &TestSystem) -> flowline_event_store::PublishedHistory {
    flowline_event_store::PublishedHistory::new(
        system.pool.clone(),
        &system.kafka.topic,
        flowline_event_store::headers::cloudevents::DEFAULT_SOURCE,
    )
}
