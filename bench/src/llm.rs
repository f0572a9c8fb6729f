//! `bench llm`: `llm` steps through the executor against the local model server
//! (`system_tests::model_server`) answering every call in a fixed 50 ms, next to direct
//! reqwest calls to the same server in the same run.
//!
//! Phase 1, overhead: one run at a time, `calls` times; a call through the executor is its
//! step's `StepStarted` → `StepSucceeded` (the events' `occurred_at`: the runner, the
//! budget reservation and settlement, pricing, the streamed call and the start's append),
//! a direct call is reqwest sending the same streamed request and reading it to the end.
//! Overhead is the difference of the two distributions at p50 and p99.
//! Phase 2, throughput: `concurrency` clients each submit a one-step `llm` run and wait for
//! it to succeed, for `seconds`; steps/s is runs succeeded per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use flowline_domain::WorkflowEvent;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use system_tests::TestSystem;
use system_tests::model_server::{MockUsage, ModelServer, Reply};

const MODEL: &str = "bench-model";
const KEY_VAR: &str = "BENCH_MOCK_KEY";

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn step(index: usize) -> Value {
    json!({"name": format!("llm {index}"), "steps": [{"id": "ask", "kind": "llm", "config": {
        "provider": "mock", "model": MODEL, "prompt": format!("Say hello ({index})"),
        "max_tokens": 16, "retry": {"max_attempts": 1}}}]})
}

async fn direct_call(http: &reqwest::Client, url: &str, index: usize) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let mut response = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth("bench-key")
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": format!("Say hello ({index})")}],
                      "max_tokens": 16, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await?
        .error_for_status()?;
    while response.chunk().await?.is_some() {}
    Ok(began.elapsed())
}

/// Waits for the run to end; whether it succeeded.
async fn ended(system: &TestSystem, run: &str, within: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        match system.run_status(run).await.as_deref() {
            Some("succeeded") => return Ok(true),
            Some("failed") => return Ok(false),
            _ if Instant::now() > deadline => anyhow::bail!("run {run} did not finish"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

async fn wait_for(system: &TestSystem, run: &str, within: Duration) -> anyhow::Result<()> {
    if ended(system, run, within).await? {
        Ok(())
    } else {
        anyhow::bail!("run {run} failed: {:?}", system.events(run).await)
    }
}

/// Runs the benchmark.
pub async fn llm(calls: usize, concurrency: usize, seconds: u64) -> anyhow::Result<()> {
    let server = ModelServer::start().await;
    server.always(
        MODEL,
        Reply::Text {
            chunks: vec!["Hello!".into()],
            delay: Duration::from_millis(50),
            usage: MockUsage {
                input: 12,
                output: 2,
                ..MockUsage::default()
            },
        },
    );
    let dir = std::env::temp_dir().join(format!("bench-llm-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let providers = dir.join("providers.toml");
    std::fs::write(
        &providers,
        format!(
            "[[provider]]\nname = \"mock\"\napi = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"{KEY_VAR}\"\nmax_concurrent_calls = 256\n",
            server.url
        ),
    )?;
    let prices = dir.join("prices.toml");
    std::fs::write(
        &prices,
        format!(
            "[[price]]\nprovider = \"mock\"\nmodel = \"{MODEL}\"\neffective_from = \"2020-01-01T00:00:00Z\"\ninput = \"1\"\noutput = \"2\"\ncache_read = \"0.5\"\ncache_write = \"0\"\nreasoning = \"2\"\n"
        ),
    )?;

    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let executor = system
        .executor_with(|config| {
            config.llm.providers_file = Some(providers.clone());
            config.llm.keys = executor::runners::llm::ProviderKeys::from([(KEY_VAR, "bench-key")]);
            config.price_table = Some(prices.clone());
            config.max_concurrent_attempts = concurrency.max(64) + 16;
            config.max_attempts_per_tenant = concurrency.max(16) + 16;
        })
        .await;
    let http = system_tests::client();
    // A budget, so every call reserves and settles as a budgeted tenant's would.
    http.put(format!("{}/v1/budgets/default", commands.url))
        .json(&json!({"monthly_limit_usd": "1000000"}))
        .send()
        .await?
        .error_for_status()?;

    // Warm-up: connections, the executor's partitions.
    for index in 0..5 {
        direct_call(&http, &server.url, index).await?;
        let run = system.submit(&commands.url, &step(index)).await;
        wait_for(&system, &run, Duration::from_secs(60)).await?;
    }

    // Phase 1: alternating, one at a time.
    let mut direct = Histogram::<u64>::new(3)?;
    let mut through = Histogram::<u64>::new(3)?;
    let mut runs = Vec::with_capacity(calls);
    for index in 0..calls {
        direct.record(direct_call(&http, &server.url, index).await?.as_micros() as u64)?;
        let run = system.submit(&commands.url, &step(index)).await;
        wait_for(&system, &run, Duration::from_secs(60)).await?;
        runs.push(run);
    }
    for run in &runs {
        let events = system.events(run).await;
        let started = events
            .iter()
            .find(|e| matches!(e.event, WorkflowEvent::StepStarted(_)))
            .context("started")?;
        let succeeded = events
            .iter()
            .find(|e| matches!(e.event, WorkflowEvent::StepSucceeded(_)))
            .context("succeeded")?;
        let micros = (succeeded.metadata.occurred_at - started.metadata.occurred_at)
            .num_microseconds()
            .unwrap_or_default()
            .max(0) as u64;
        through.record(micros)?;
    }

    // Phase 2: `concurrency` closed-loop clients.
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let stop_at = began + Duration::from_secs(seconds);
    let system = Arc::new(system);
    let mut clients = Vec::new();
    for client in 0..concurrency {
        let (system, done, failed, url) = (
            Arc::clone(&system),
            Arc::clone(&done),
            Arc::clone(&failed),
            commands.url.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut index = 1_000_000 * (client + 1);
            while Instant::now() < stop_at {
                let run = system.submit(&url, &step(index)).await;
                if ended(&system, &run, Duration::from_secs(120)).await? {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                index += 1;
            }
            anyhow::Ok(())
        }));
    }
    for client in clients {
        client.await??;
    }
    let elapsed = began.elapsed();
    let steps = done.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    executor.stop().await;
    commands.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "bench llm: one-step llm runs against the local mock answering in 50 ms (OpenAI wire, streamed), one executor, 3 partitions"
    );
    println!("{:<52} {:>10} {:>10}", "per call", "p50 ms", "p99 ms");
    println!(
        "{:<52} {:>10.1} {:>10.1}",
        "direct reqwest call (baseline)",
        ms(&direct, 0.5),
        ms(&direct, 0.99)
    );
    println!(
        "{:<52} {:>10.1} {:>10.1}",
        "through the executor (StepStarted → StepSucceeded)",
        ms(&through, 0.5),
        ms(&through, 0.99)
    );
    println!(
        "{:<52} {:>10.1} {:>10.1}",
        "overhead (executor − direct)",
        ms(&through, 0.5) - ms(&direct, 0.5),
        ms(&through, 0.99) - ms(&direct, 0.99)
    );
    println!(
        "throughput with {concurrency} concurrent runs: {:.1} steps/s ({steps} succeeded, {failed} failed, in {:.1} s; the 50 ms mock alone bounds it at {:.0}/s)",
        steps as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        concurrency as f64 / 0.05
    );
    Ok(())
}
