//! `bench execute`: the executor driving workflows of 10 `template` steps (a chain and a
//! 1→8→1 fan-out) to completion, next to the write path's own events/s (signals through
//! the command service, `bench append`'s many-streams phase) measured in the same run.
//!
//! Phase 1, throughput: a backlog of runs is on the log before the executor starts; runs/s
//! and events/s are measured from its start until the last run succeeded.
//! Phase 2, latency: runs are submitted at a rate that makes the executor append half the
//! events/s of phase 1; per-step scheduling overhead is the time from the event that made
//! the step runnable being on the log (its `published_at`, set when the broker acked it)
//! to the step's `StepStarted` being on the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use flowline_domain::WorkflowEvent;
use futures::future::join_all;
use serde_json::{Value, json};
use system_tests::TestSystem;

use crate::{histogram, ms, run_clients, submit_workflow};

/// Events a 10-step run puts on its stream: submitted, started, 2 per step, succeeded.
const EVENTS_PER_RUN: u64 = 23;

fn ten_steps(index: usize) -> Value {
    let steps = system_tests::workloads::ten_steps(index, |id, depends_on| {
        json!({"id": id, "kind": "template", "depends_on": depends_on,
               "config": {"template": format!("{{{{ input.n }}}}-{id}")}})
    });
    json!({"name": format!("bench-{index}"), "input": {"n": index}, "steps": steps})
}

async fn submit_runs(
    system: &TestSystem,
    url: &str,
    first: usize,
    count: usize,
) -> anyhow::Result<()> {
    for chunk in (first..first + count).collect::<Vec<_>>().chunks(32) {
        let replies = join_all(chunk.iter().map(|&i| {
            system
                .http
                .post(format!("{url}/v1/workflows"))
                .json(&ten_steps(i))
                .send()
        }))
        .await;
        for reply in replies {
            reply?.error_for_status()?;
        }
    }
    Ok(())
}

async fn count(system: &TestSystem, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(&system.pool).await?)
}

async fn wait_succeeded(system: &TestSystem, runs: i64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while count(
        system,
        "SELECT count(*) FROM event_store WHERE event_type = 'WorkflowSucceeded'",
    )
    .await?
        < runs
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "runs did not finish within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Per-step overheads (µs): enabling event on the log → `StepStarted` on the log (by
/// `published_at`, which the relay sets per batch), and the executor's own part: the
/// enabling event decided → the start decided (`occurred_at`; includes the enabling
/// event's append).
async fn step_overheads(
    system: &TestSystem,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, hdrhistogram::Histogram<u64>)> {
    let rows: Vec<(uuid::Uuid, Vec<u8>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT stream_id, payload, published_at FROM event_store \
         WHERE published_at IS NOT NULL ORDER BY stream_id, stream_version",
    )
    .fetch_all(&system.pool)
    .await?;
    let codec = flowline_schemas::EventCodec::default();
    let mut on_log: HashMap<uuid::Uuid, Vec<(WorkflowEvent, DateTime<Utc>)>> = HashMap::new();
    let mut decided: HashMap<uuid::Uuid, Vec<(WorkflowEvent, DateTime<Utc>)>> = HashMap::new();
    for (stream, payload, published) in rows {
        let envelope = codec.decode(&payload)?;
        decided
            .entry(stream)
            .or_default()
            .push((envelope.event.clone(), envelope.metadata.occurred_at));
        on_log
            .entry(stream)
            .or_default()
            .push((envelope.event, published));
    }
    Ok((overheads_of(&on_log)?, overheads_of(&decided)?))
}

fn overheads_of(
    runs: &HashMap<uuid::Uuid, Vec<(WorkflowEvent, DateTime<Utc>)>>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut overheads = histogram();
    for events in runs.values() {
        let Some(WorkflowEvent::Submitted(submitted)) = events.first().map(|(e, _)| e) else {
            continue;
        };
        let Some(started) = events
            .iter()
            .find_map(|(e, at)| matches!(e, WorkflowEvent::Started(_)).then_some(*at))
        else {
            continue;
        };
        let succeeded: HashMap<&str, DateTime<Utc>> = events
            .iter()
            .filter_map(|(e, at)| match e {
                WorkflowEvent::StepSucceeded(s) => Some((s.step_id.as_str(), *at)),
                _ => None,
            })
            .collect();
        for (event, at) in events {
            let WorkflowEvent::StepStarted(step) = event else {
                continue;
            };
            let definition = submitted
                .steps
                .iter()
                .find(|s| s.id == step.step_id)
                .context("step")?;
            let enabled = definition
                .depends_on
                .iter()
                .filter_map(|d| succeeded.get(d.as_str()).copied())
                .max()
                .unwrap_or(started);
            let micros = (*at - enabled).num_microseconds().unwrap_or(0).max(1) as u64;
            overheads.record(micros)?;
        }
    }
    Ok(overheads)
}

/// Runs the benchmark.
pub async fn execute(runs: usize, clients: usize, seconds: u64) -> anyhow::Result<()> {
    // Baseline: the write path alone, signals from `clients` clients to many streams.
    let baseline_system = TestSystem::new(3).await;
    let writer = baseline_system.command_service().await;
    let http = system_tests::client();
    let mut ids = Vec::new();
    for _ in 0..500 {
        let reply = submit_workflow(&http, &format!("{}/v1/workflows", writer.url)).await?;
        ids.push(reply["workflow_id"].as_str().context("id")?.to_owned());
    }
    let (ids, url) = (Arc::new(ids), writer.url.clone());
    let append = run_clients(clients, Duration::from_secs(seconds), move |n| {
        let (http, ids, url) = (http.clone(), Arc::clone(&ids), url.clone());
        async move {
            let id = &ids[rand::random_range(0..ids.len())];
            http.post(format!("{url}/v1/workflows/{id}/signals/tick"))
                .json(&json!({"n": n}))
                .send()
                .await?
                .error_for_status()?;
            Ok(None)
        }
    })
    .await?;
    writer.stop().await;
    let append_rate = append.count as f64 / append.elapsed.as_secs_f64();

    // Phase 1: a backlog of runs, then the executor.
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    submit_runs(&system, &commands.url, 0, runs).await?;
    let began = Instant::now();
    let executor = system.executor().await;
    wait_succeeded(&system, runs as i64, Duration::from_secs(600)).await?;
    let drained = began.elapsed();
    executor.stop().await;
    let executor_events = runs as u64 * (EVENTS_PER_RUN - 1);
    let run_rate = runs as f64 / drained.as_secs_f64();
    let event_rate = executor_events as f64 / drained.as_secs_f64();
    commands.stop().await;

    // Phase 2: half of phase 1's event rate, submitted steadily, for `seconds`.
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let executor = system.executor().await;
    let target_runs_per_second = (event_rate / 2.0 / (EVENTS_PER_RUN - 1) as f64).max(1.0);
    let total = (target_runs_per_second * seconds as f64).ceil() as usize;
    let interval = Duration::from_secs_f64(1.0 / target_runs_per_second);
    let mut ticker = tokio::time::interval(interval);
    let mut submissions = Vec::new();
    for i in 0..total {
        ticker.tick().await;
        let (http, url) = (system.http.clone(), commands.url.clone());
        submissions.push(tokio::spawn(async move {
            http.post(format!("{url}/v1/workflows"))
                .json(&ten_steps(i))
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        }));
    }
    for submission in submissions {
        submission.await??;
    }
    wait_succeeded(&system, total as i64, Duration::from_secs(600)).await?;
    executor.stop().await;
    commands.stop().await;
    let (overheads, decisions) = step_overheads(&system).await?;

    println!(
        "bench execute: {runs} runs of 10 template steps (half chains, half 1→8→1 fan-outs), 3 partitions, one executor"
    );
    println!("{:<58} {:>12}", "", "events/s");
    println!(
        "{:<58} {:>12.0}",
        format!("write path alone: signals, {clients} clients (baseline)"),
        append_rate
    );
    println!(
        "{:<58} {:>12.0}",
        "executor draining the backlog (events it appended)", event_rate
    );
    println!("executor ÷ write path = {:.2}", event_rate / append_rate);
    println!(
        "runs/s draining the backlog: {run_rate:.1} ({runs} runs in {:.1} s)",
        drained.as_secs_f64()
    );
    println!(
        "per-step scheduling overhead at {:.0} runs/s (half the executor's event rate), {} steps: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        target_runs_per_second,
        overheads.len(),
        ms(&overheads, 0.5),
        ms(&overheads, 0.99),
        overheads.max() as f64 / 1000.0
    );
    println!(
        "  of which the executor's own (enabling event decided → start decided, the enabling append included): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(&decisions, 0.5),
        ms(&decisions, 0.99),
        decisions.max() as f64 / 1000.0
    );
    Ok(())
}
