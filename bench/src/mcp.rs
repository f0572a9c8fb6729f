//! `bench mcp`: `mcp_tool` calls to npm server-everything (`echo` over stdio) through the
//! executor, next to direct rmcp calls to the same server measured in the same run.
//!
//! 1. direct: an rmcp client of its own (`TokioChildProcess`, one session), `tools/call`
//!    one after another;
//! 2. port: the same calls through `flowline-mcp-client`'s `ToolCaller` (what the runner
//!    uses), to tell the port's cost from the executor's;
//! 3. executor: one-step `mcp_tool` workflows submitted one at a time; per call, the
//!    attempt as the executor timed it (`StepSucceeded.duration_ms`: runner start → result,
//!    whole milliseconds), the time from the step's `StepStarted` to its `StepSucceeded`
//!    (their `occurred_at`, set when the executor decides each: the `StepStarted` append,
//!    rendering and the call are in it), and submit → run succeeded end to end.
//!
//! The overhead of a call through the executor is (3) minus (1), at p50 and at p99.

use std::time::{Duration, Instant};

use anyhow::Context;
use flowline_domain::WorkflowEvent;
use flowline_mcp_client::{McpClient, ServersConfig, ToolCall, ToolCaller};
use hdrhistogram::Histogram;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use serde_json::{Map, Value, json};
use system_tests::TestSystem;
use system_tests::mcp_servers::{ServersFile, everything_script};

use crate::{histogram, ms};

/// Unmeasured calls (or runs) before each phase: process start, JIT, caches.
const WARM_UP_CALLS: usize = 20;

fn arguments(index: usize) -> Map<String, Value> {
    let Value::Object(arguments) = json!({"message": format!("bench {index}")}) else {
        unreachable!("an object literal")
    };
    arguments
}

async fn direct(calls: usize) -> anyhow::Result<Histogram<u64>> {
    let mut command = tokio::process::Command::new("node");
    command.arg(everything_script()).arg("stdio");
    let client =
        ().serve(TokioChildProcess::new(command)?)
            .await
            .context("rmcp session with server-everything")?;
    let mut latency = histogram();
    for index in 0..WARM_UP_CALLS + calls {
        let started = Instant::now();
        let result = client
            .call_tool(CallToolRequestParams::new("echo").with_arguments(arguments(index)))
            .await?;
        anyhow::ensure!(result.is_error != Some(true), "echo failed: {result:?}");
        if index >= WARM_UP_CALLS {
            latency.record(started.elapsed().as_micros() as u64)?;
        }
    }
    client.cancel().await?;
    Ok(latency)
}

async fn through_port(servers: &ServersFile, calls: usize) -> anyhow::Result<Histogram<u64>> {
    let client = McpClient::new(ServersConfig::load(&servers.path)?);
    let mut latency = histogram();
    for index in 0..WARM_UP_CALLS + calls {
        let started = Instant::now();
        client
            .call_tool(ToolCall {
                server: "everything".into(),
                tool: "echo".into(),
                arguments: arguments(index),
                timeout: None,
                progress: None,
            })
            .await?;
        if index >= WARM_UP_CALLS {
            latency.record(started.elapsed().as_micros() as u64)?;
        }
    }
    Ok(latency)
}

async fn wait_succeeded(system: &TestSystem, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match system.run_status(id).await.as_deref() {
            Some("succeeded") => return Ok(()),
            Some("failed") => anyhow::bail!("run {id} failed: {:?}", system.events(id).await),
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "run {id} did not finish in 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

struct ExecutorPhase {
    attempt: Histogram<u64>,
    step: Histogram<u64>,
    end_to_end: Histogram<u64>,
}

async fn through_executor(servers: &ServersFile, runs: usize) -> anyhow::Result<ExecutorPhase> {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let path = servers.path.clone();
    let executor = system
        .executor_with(move |config| config.mcp.servers_file = Some(path))
        .await;
    let mut phase = ExecutorPhase {
        attempt: histogram(),
        step: histogram(),
        end_to_end: histogram(),
    };
    let mut measured = Vec::with_capacity(runs);
    for index in 0..WARM_UP_CALLS + runs {
        let body = json!({
            "name": format!("mcp-{index}"),
            "steps": [{"id": "echo", "kind": "mcp_tool",
                       "config": {"server": "everything", "tool": "echo",
                                  "arguments": {"message": format!("bench {index}")}}}]
        });
        let started = Instant::now();
        let id = system.submit(&commands.url, &body).await;
        wait_succeeded(&system, &id).await?;
        if index >= WARM_UP_CALLS {
            phase
                .end_to_end
                .record(started.elapsed().as_micros() as u64)?;
            measured.push(id);
        }
    }
    for id in measured {
        let events = system.events(&id).await;
        let at = |wanted: fn(&WorkflowEvent) -> bool| {
            events
                .iter()
                .find(|e| wanted(&e.event))
                .map(|e| e.metadata.occurred_at)
        };
        let started = at(|e| matches!(e, WorkflowEvent::StepStarted(_))).context("StepStarted")?;
        let succeeded =
            at(|e| matches!(e, WorkflowEvent::StepSucceeded(_))).context("StepSucceeded")?;
        let duration_ms = events
            .iter()
            .find_map(|e| match &e.event {
                WorkflowEvent::StepSucceeded(s) => Some(s.duration_ms),
                _ => None,
            })
            .unwrap_or(0);
        // Whole milliseconds on the event; a 0 is recorded as under one.
        phase.attempt.record((duration_ms * 1000).max(1))?;
        let micros = (succeeded - started).num_microseconds().unwrap_or(0).max(1);
        phase.step.record(micros as u64)?;
    }
    executor.stop().await;
    commands.stop().await;
    Ok(phase)
}

fn row(label: &str, latency: &Histogram<u64>) {
    println!(
        "{label:<60} {:>9.3} {:>9.3} {:>9.3}",
        ms(latency, 0.5),
        ms(latency, 0.99),
        ms(latency, 1.0)
    );
}

/// Runs the three phases and prints their latencies and the executor's overhead.
pub async fn mcp(calls: usize, runs: usize) -> anyhow::Result<()> {
    let servers = ServersFile::write(None, "");
    println!(
        "mcp_tool calls to server-everything `echo` over stdio ({calls} direct and port calls, {runs} runs)"
    );
    println!("{:<60} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms");
    let direct = direct(calls).await?;
    row("direct rmcp call (baseline)", &direct);
    let port = through_port(&servers, calls).await?;
    row("through the ToolCaller port (McpClient)", &port);
    let executor = through_executor(&servers, runs).await?;
    row(
        "through the executor: the attempt (duration_ms, whole ms)",
        &executor.attempt,
    );
    row(
        "through the executor: StepStarted → StepSucceeded",
        &executor.step,
    );
    row(
        "through the executor: submit → run succeeded",
        &executor.end_to_end,
    );
    for (label, quantile) in [("p50", 0.5), ("p99", 0.99)] {
        let baseline = ms(&direct, quantile);
        let step = ms(&executor.step, quantile);
        println!(
            "executor overhead {label}: {:.3} ms over the direct call (step ÷ direct = {:.2}); port overhead {label}: {:.3} ms",
            step - baseline,
            step / baseline,
            ms(&port, quantile) - baseline,
        );
    }
    Ok(())
}
