//! One actor per live run: it holds the run's state (folded from its events), asks the
//! scheduler what to do, records each transition through the aggregate and the event
//! store (expected version = the state it decided on), and owns the run's in-flight
//! attempts. Events of other writers (cancel, signal, pause) reach it from the feed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use flowline_domain::schedule::{self, Decision};
use flowline_domain::{
    Aggregate, EventEnvelope, EventMetadata, StepCommand, StepError, StepKind, StepPolicy,
    StepStatus, Versioned, Workflow, WorkflowCommand, WorkflowEvent,
};
use futures::FutureExt;
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};
use uuid::Uuid;

use flowline_service_kit::health::panic_message;

use crate::bounded;
use crate::dispatch::Slot;
use crate::feed::Shared;
use crate::metrics::Metrics;
use crate::runners::{AttemptFailure, AttemptInput, StepOutput};

/// Longest error text of a personal step kept (sealed) on its event: its envelope is
/// about twice its bytes and must stay within the event's bounds.
const PERSONAL_MESSAGE_CHARS: usize = 500;

/// What an actor hears.
#[derive(Debug)]
pub(crate) enum RunMessage {
    /// An event of the run, as published.
    Event(Box<EventEnvelope>),
    /// An attempt this actor started ended.
    AttemptDone {
        step_id: String,
        attempt_id: Uuid,
        result: Result<StepOutput, AttemptFailure>,
        elapsed: Duration,
    },
}

/// What `/admin/runs` shows of a run.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    /// The run.
    pub workflow_id: Uuid,
    /// Its tenant.
    pub tenant: String,
    /// Its log partition.
    pub partition: i32,
    /// Its status.
    pub status: String,
    /// Its stream version.
    pub version: u64,
    /// Steps with an attempt running here.
    pub running_steps: Vec<String>,
    /// Steps waiting for a slot.
    pub queued_steps: Vec<String>,
    /// When the run is next due to be looked at (a retry, a deadline).
    pub next_wake_at: Option<chrono::DateTime<Utc>>,
}

struct InFlight {
    attempt_id: Uuid,
    task: JoinHandle<()>,
}

/// The handle the feed keeps of a running actor.
pub(crate) struct RunHandle {
    pub(crate) inbox: mpsc::UnboundedSender<RunMessage>,
    /// Cancelled when its partition was given up: the actor is on its way out.
    pub(crate) stop: CancellationToken,
    pub(crate) summary: Arc<Mutex<RunSummary>>,
}

/// How an actor begins.
pub(crate) enum Origin {
    /// From its submission, just read from the log.
    Submitted(Box<EventEnvelope>),
    /// From the event store (taken over, or an event for a run not in memory).
    Stored,
}

pub(crate) struct RunActor {
    id: Uuid,
    tenant: String,
    state: Versioned<Workflow>,
    policies: Vec<StepPolicy>,
    correlation_id: Uuid,
    last_event_id: Uuid,
    in_flight: HashMap<String, InFlight>,
    queued: HashMap<String, oneshot::Receiver<Slot>>,
    /// Outputs of succeeded steps, resolved (references loaded), for templates; personal
    /// ones sealed as on their events, opened anew for each rendering so that an erasure
    /// holds at once.
    outputs: HashMap<String, Value>,
    /// Per step, the data keys its running attempt's input came from: its outcome is
    /// sealed with them (ADR 26). Absent: the step saw no personal data.
    personal: HashMap<String, BTreeSet<Uuid>>,
    wake_at: Option<chrono::DateTime<Utc>>,
    /// The state was reloaded or another writer started an attempt: look for attempts
    /// running with no actor.
    orphans_pending: bool,
    shared: Arc<Shared>,
    inbox: mpsc::UnboundedReceiver<RunMessage>,
    me: mpsc::UnboundedSender<RunMessage>,
    summary: Arc<Mutex<RunSummary>>,
    stop: CancellationToken,
}

/// Starts the actor of run `id`; registered by the caller under the registry lock.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    id: Uuid,
    tenant: String,
    partition: i32,
    origin: Origin,
    stop: CancellationToken,
    restarts: u32,
) -> RunHandle {
    let (sender, inbox) = mpsc::unbounded_channel();
    let shared_for_restart = Arc::clone(&shared);
    let tenant_for_restart = tenant.clone();
    let summary = Arc::new(Mutex::new(RunSummary {
        workflow_id: id,
        tenant: tenant.clone(),
        partition,
        ..RunSummary::default()
    }));
    let actor = RunActor {
        id,
        tenant,
        state: Versioned::default(),
        policies: Vec::new(),
        correlation_id: id,
        last_event_id: id,
        in_flight: HashMap::new(),
        queued: HashMap::new(),
        outputs: HashMap::new(),
        personal: HashMap::new(),
        wake_at: None,
        orphans_pending: false,
        shared,
        inbox,
        me: sender.clone(),
        summary: Arc::clone(&summary),
        stop: stop.clone(),
    };
    let task = tokio::spawn(actor.run(origin));
    let restart = Restart {
        shared: Arc::clone(&shared_for_restart),
        id,
        tenant: tenant_for_restart,
        partition,
        inbox: sender.clone(),
        stop: stop.clone(),
        restarts,
    };
    tokio::spawn(restart.after_panic(task));
    RunHandle {
        inbox: sender,
        stop,
        summary,
    }
}

/// What restarting a run's actor takes.
struct Restart {
    shared: Arc<Shared>,
    id: Uuid,
    tenant: String,
    partition: i32,
    inbox: mpsc::UnboundedSender<RunMessage>,
    stop: CancellationToken,
    restarts: u32,
}

impl Restart {
    /// Waits for the actor's task; when it panicked, starts a new actor from the store
    /// after a pause that doubles with each restart of this run (1 s up to a minute), so a
    /// run that panics every time costs one reload a minute, not a busy loop. Attempts the
    /// dead actor had started are found orphaned by the new one and retried (`lost`).
    async fn after_panic(self, task: tokio::task::JoinHandle<()>) {
        let Err(error) = task.await else { return };
        if !error.is_panic() || self.stop.is_cancelled() {
            return;
        }
        Metrics::count(&self.shared.metrics.actor_panics);
        let pause = Duration::from_secs(1 << self.restarts.min(6));
        error!(
            workflow_id = %self.id,
            why = %panic_message(&*error.into_panic()),
            ?pause,
            "run actor panicked; restarting it from the store"
        );
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(pause) => {
                self.shared.restart_actor(
                    self.id,
                    &self.tenant,
                    self.partition,
                    &self.inbox,
                    self.stop.clone(),
                    self.restarts + 1,
                );
            }
        }
    }
}

enum Woke {
    Stopped,
    Message(RunMessage),
    Granted(String, Option<Slot>),
    Timer,
}

enum Recorded {
    Applied,
    /// Another writer moved the stream; the state was reloaded.
    Reloaded,
    /// The aggregate refused (the state changed under the decision): nothing recorded.
    Refused,
    Stopped,
}

impl RunActor {
    async fn run(mut self, origin: Origin) {
        let loaded = match origin {
            Origin::Submitted(envelope) => {
                self.correlation_id = envelope.metadata.correlation_id;
                self.observe(&envelope);
                true
            }
            Origin::Stored => self.reload().await,
        };
        if loaded && !self.stop.is_cancelled() {
            self.adopt_orphans().await;
            self.main_loop().await;
        }
        for (_, attempt) in self.in_flight.drain() {
            attempt.task.abort();
        }
        self.shared.unregister(self.id, &self.me);
    }

    async fn main_loop(&mut self) {
        loop {
            if std::mem::take(&mut self.orphans_pending) {
                self.adopt_orphans().await;
            }
            self.drive().await;
            self.publish_summary();
            if self.stop.is_cancelled() {
                return;
            }
            if self.state.state.status.is_terminal() && self.in_flight.is_empty() {
                // Exits only when nothing is waiting for it: the feed sends under the same
                // lock, so no event is lost between this check and unregistering.
                if self
                    .shared
                    .try_retire(self.id, &mut self.inbox, self.state.version)
                {
                    return;
                }
                // Something arrived meanwhile: take it below, then try again.
            }
            let sleep = self.wake_at.map(|at| {
                (at - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    // Never early: sleep a hair past the due time.
                    + Duration::from_millis(2)
            });
            let woke = {
                let granted = next_grant(&mut self.queued);
                tokio::select! {
                    () = self.stop.cancelled() => Woke::Stopped,
                    message = self.inbox.recv() => message.map_or(Woke::Stopped, Woke::Message),
                    (step_id, slot) = granted => Woke::Granted(step_id, slot),
                    () = sleep_for(sleep) => Woke::Timer,
                }
            };
            match woke {
                Woke::Stopped => return,
                Woke::Message(message) => self.handle(message).await,
                Woke::Granted(step_id, Some(slot)) => self.start_attempt(&step_id, slot).await,
                Woke::Granted(_, None) | Woke::Timer => {}
            }
        }
    }

    fn publish_summary(&self) {
        let mut summary = self.summary.lock().expect("summary lock");
        summary.status = self.state.state.status.as_str().to_owned();
        summary.version = self.state.version;
        summary.running_steps = self.in_flight.keys().cloned().collect();
        summary.queued_steps = self.queued.keys().cloned().collect();
        summary.next_wake_at = self.wake_at;
    }

    async fn handle(&mut self, message: RunMessage) {
        match message {
            RunMessage::Event(envelope) => {
                let version = envelope.metadata.stream_version;
                if version <= self.state.version {
                    return; // recorded by this actor, or already seen
                }
                if version == self.state.version + 1 {
                    if let WorkflowEvent::StepStarted(started) = &envelope.event
                        && self.in_flight.get(&started.step_id).map(|f| f.attempt_id)
                            != Some(started.attempt_id)
                    {
                        self.orphans_pending = true;
                    }
                    self.observe(&envelope);
                } else {
                    self.reload().await;
                    self.orphans_pending = true;
                }
                self.stop_attempts_of_a_finished_run();
            }
            RunMessage::AttemptDone {
                step_id,
                attempt_id,
                result,
                elapsed,
            } => {
                if self.in_flight.get(&step_id).map(|f| f.attempt_id) == Some(attempt_id) {
                    self.in_flight.remove(&step_id);
                }
                self.record_outcome(&step_id, attempt_id, result, elapsed)
                    .await;
            }
        }
    }

    /// Folds an event in (from the feed or from this actor's own append).
    fn observe(&mut self, envelope: &EventEnvelope) {
        self.state.apply(&envelope.event);
        self.last_event_id = envelope.metadata.event_id;
        match &envelope.event {
            WorkflowEvent::Submitted(_) => {
                self.policies = schedule::policies(&self.state.state);
            }
            WorkflowEvent::StepSucceeded(succeeded) if succeeded.output_ref.is_none() => {
                self.outputs
                    .insert(succeeded.step_id.clone(), succeeded.output.clone());
            }
            WorkflowEvent::StepRetried(_) => {
                // Steps that go again will produce new outputs.
                let state = &self.state.state;
                self.outputs.retain(|id, _| {
                    state.step(id).map(|s| s.status) == Some(StepStatus::Succeeded)
                });
            }
            _ => {}
        }
    }

    /// Loads the run from the event store; `false` when it does not exist.
    async fn reload(&mut self) -> bool {
        loop {
            match self.shared.repository.load(&self.tenant, self.id).await {
                Ok(state) if state.version > 0 => {
                    if self.state.version == 0 {
                        self.correlation_id = self.first_correlation().await.unwrap_or(self.id);
                    }
                    self.state = state;
                    self.policies = schedule::policies(&self.state.state);
                    let succeeded: HashSet<&str> = self
                        .state
                        .state
                        .steps
                        .iter()
                        .filter(|s| s.status == StepStatus::Succeeded)
                        .map(|s| s.id.as_str())
                        .collect();
                    self.outputs.retain(|id, _| succeeded.contains(id.as_str()));
                    return true;
                }
                Ok(_) => return false,
                Err(error) => {
                    warn!(workflow_id = %self.id, %error, "run not loaded; retrying");
                    if self.pause(Duration::from_millis(500)).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn first_correlation(&self) -> Option<Uuid> {
        let first = self
            .shared
            .repository
            .store()
            .load_range(&self.tenant, self.id, 0, Some(1))
            .await
            .ok()?;
        first.first().map(|e| e.envelope.metadata.correlation_id)
    }

    /// Sleeps unless stopped first (`true`: stopped).
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => true,
            () = tokio::time::sleep(duration) => false,
        }
    }

    /// Attempts recorded as running that no actor runs (their executor stopped): each is
    /// failed as `lost` and retried per the step's policy (at-least-once execution).
    async fn adopt_orphans(&mut self) {
        let orphans: Vec<(String, Uuid, u32)> = self
            .state
            .state
            .steps
            .iter()
            .filter(|s| s.kind != StepKind::Wait)
            .filter_map(|s| {
                s.running_attempt()
                    .map(|a| (s.id.clone(), a.attempt_id, a.number))
            })
            .filter(|(step_id, _, _)| !self.in_flight.contains_key(step_id))
            .collect();
        for (step_id, attempt_id, attempt) in orphans {
            Metrics::count(&self.shared.metrics.attempts_lost);
            let failure = AttemptFailure::transient(
                "lost",
                format!("attempt {attempt} was running when its executor stopped"),
            );
            self.record_failure(&step_id, attempt_id, attempt, failure)
                .await;
        }
    }

    fn stop_attempts_of_a_finished_run(&mut self) {
        if !self.state.state.status.is_terminal() {
            return;
        }
        // Dropping an attempt's task drops its request: the server sees the connection go.
        for (_, attempt) in self.in_flight.drain() {
            attempt.task.abort();
        }
        self.queued.clear();
    }

    /// Plans and records until nothing more is due now.
    async fn drive(&mut self) {
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let now = Utc::now();
            let plan = schedule::plan(&self.state.state, &self.policies, now);
            self.wake_at = plan.wake_at;
            let mut moved = false;
            for decision in plan.decisions {
                let outcome = match decision {
                    Decision::StartRun => {
                        let recorded = self
                            .record(WorkflowCommand::Start { started_at: now })
                            .await;
                        if matches!(recorded, Recorded::Applied) {
                            Metrics::count(&self.shared.metrics.runs_started);
                        }
                        recorded
                    }
                    Decision::StartStep { step_id } => {
                        if let Some(index) = self.step_index(&step_id)
                            && self.state.state.steps[index].kind == StepKind::Wait
                        {
                            self.start_wait(index, now).await
                        } else {
                            self.enqueue(step_id);
                            continue;
                        }
                    }
                    Decision::CompleteWait {
                        step_id,
                        attempt_id,
                        payload,
                    } => {
                        self.record_success(&step_id, attempt_id, payload.into(), Duration::ZERO)
                            .await
                    }
                    Decision::TimeOutStep {
                        step_id,
                        attempt_id,
                    } => self.time_out(&step_id, attempt_id).await,
                    Decision::SkipStep { step_id, reason } => {
                        self.record(WorkflowCommand::Step {
                            step_id,
                            command: StepCommand::Skip { reason },
                        })
                        .await
                    }
                    Decision::SucceedRun => {
                        let recorded = self.record(WorkflowCommand::Succeed).await;
                        if matches!(recorded, Recorded::Applied) {
                            Metrics::count(&self.shared.metrics.runs_succeeded);
                        }
                        recorded
                    }
                    Decision::FailRun { reason, step_id } => {
                        let recorded = self.record(WorkflowCommand::Fail { reason, step_id }).await;
                        if matches!(recorded, Recorded::Applied) {
                            Metrics::count(&self.shared.metrics.runs_failed);
                        }
                        self.stop_attempts_of_a_finished_run();
                        recorded
                    }
                };
                match outcome {
                    // A refusal means the plan and the aggregate disagree about this
                    // state; planning again would only repeat it. The next event or timer
                    // plans afresh.
                    Recorded::Refused => {
                        warn!(workflow_id = %self.id, "the aggregate refused the scheduler's decision");
                        return;
                    }
                    Recorded::Stopped => return,
                    Recorded::Applied | Recorded::Reloaded => {
                        moved = true;
                        break;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn step_index(&self, step_id: &str) -> Option<usize> {
        self.state.state.steps.iter().position(|s| s.id == step_id)
    }

    fn enqueue(&mut self, step_id: String) {
        if self.in_flight.contains_key(&step_id) || self.queued.contains_key(&step_id) {
            return;
        }
        let request = self.shared.dispatcher.request(&self.tenant);
        self.queued.insert(step_id, request);
    }

    fn attempt_deadline(
        &self,
        index: usize,
        now: chrono::DateTime<Utc>,
    ) -> Option<chrono::DateTime<Utc>> {
        let step = &self.state.state.steps[index];
        let timeout = self
            .policies
            .get(index)
            .and_then(|p| p.timeout)
            .or(match step.kind {
                StepKind::Http => Some(self.shared.default_http_timeout),
                _ => None,
            });
        flowline_domain::policy::deadline(now, timeout)
    }

    async fn start_wait(&mut self, index: usize, now: chrono::DateTime<Utc>) -> Recorded {
        let step_id = self.state.state.steps[index].id.clone();
        let deadline = self.attempt_deadline(index, now);
        self.record(WorkflowCommand::Step {
            step_id,
            command: StepCommand::Start {
                attempt_id: Uuid::now_v7(),
                input: json!({}),
                started_at: now,
                deadline,
            },
        })
        .await
    }

    /// A slot was granted: start the step's next attempt if it is still runnable.
    async fn start_attempt(&mut self, step_id: &str, slot: Slot) {
        let now = Utc::now();
        let runnable = schedule::may_start(&self.state.state, step_id, now);
        let Some(index) = self.step_index(step_id).filter(|_| runnable) else {
            return; // drops the slot
        };
        let config = self.state.state.steps[index].config.clone();
        let (rendered, personal) = match self.context().await {
            Ok((context, opened)) => (
                self.shared
                    .renderer
                    .render_config(&config, &context)
                    .map_err(|e| AttemptFailure::permanent(e.kind, e.message)),
                // A template over a context holding personal data may put it anywhere in
                // what the attempt runs with and makes: all of it is sealed with every key
                // met (erasing any one of those subjects erases it).
                (opened.personal && crate::render::has_templates(&config)).then_some(opened.keys),
            ),
            Err(failure) => (Err(failure), None),
        };
        match personal {
            Some(keys) => self.personal.insert(step_id.to_owned(), keys),
            None => self.personal.remove(step_id),
        };
        let attempt_id = Uuid::now_v7();
        let deadline = self.attempt_deadline(index, now);
        let input = rendered.as_ref().map_or_else(
            |_| self.state.state.steps[index].config.clone(),
            |rendered| bounded::without_envelopes(bounded::text_of(rendered.clone())),
        );
        // The event carries what the attempt ran with (sealed when personal); a large
        // rendered config is kept by reference, as large outputs are, so the event always
        // fits the log.
        let Some(recorded) = self.sealed(step_id, &input).await else {
            return;
        };
        let Some((inline, reference)) = self.stored(recorded).await else {
            return;
        };
        let recorded_input = reference.map_or(inline, |reference| json!({ "$ref": reference }));
        let started = self
            .record(WorkflowCommand::Step {
                step_id: step_id.to_owned(),
                command: StepCommand::Start {
                    attempt_id,
                    input: recorded_input,
                    started_at: now,
                    deadline,
                },
            })
            .await;
        if !matches!(started, Recorded::Applied) {
            return;
        }
        Metrics::count(&self.shared.metrics.attempts_started);
        let attempt = self.state.state.steps[index].attempts.len() as u32;
        let kind = self.state.state.steps[index].kind;
        let sink = self
            .shared
            .live
            .sink(&self.tenant, self.id, step_id, attempt);
        // Subscribers of a streaming step wait for each attempt's end marker: it goes out
        // before the attempt's outcome is recorded, whichever way the attempt ends.
        let live = kind.streams_live_output().then(|| sink.clone());
        let runner = match (rendered, self.shared.runners.get(kind)) {
            (Err(failure), _) => {
                if let Some(live) = &live {
                    live.finished();
                }
                self.record_failure(step_id, attempt_id, attempt, failure)
                    .await;
                return;
            }
            (Ok(_), None) => {
                if let Some(live) = &live {
                    live.finished();
                }
                let failure = AttemptFailure::permanent(
                    "not_configured",
                    format!("no runner for '{}' steps", kind.as_str()),
                );
                self.record_failure(step_id, attempt_id, attempt, failure)
                    .await;
                return;
            }
            (Ok(_), Some(runner)) => runner,
        };
        let attempt_input = AttemptInput {
            workflow_id: self.id,
            tenant: self.tenant.clone(),
            step_id: step_id.to_owned(),
            attempt,
            attempt_id,
            input,
            deadline,
            last_attempt: self.is_last_attempt(index, attempt),
            live: sink,
        };
        let report = self.me.clone();
        let step = step_id.to_owned();
        let metrics = Arc::clone(&self.shared.metrics);
        let task = tokio::spawn(async move {
            let began = Instant::now();
            // A runner that panics fails its attempt instead of leaving the step running
            // with nobody to report its outcome.
            let result = AssertUnwindSafe(runner.run(attempt_input))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Metrics::count(&metrics.runner_panics);
                    Err(AttemptFailure::transient(
                        "runner_panicked",
                        format!("the step's runner panicked: {}", panic_message(&*panic)),
                    ))
                });
            if let Some(live) = &live {
                live.finished();
            }
            // The slot is held until the outcome is handed over.
            let _slot = slot;
            drop(report.send(RunMessage::AttemptDone {
                step_id: step,
                attempt_id,
                result,
                elapsed: began.elapsed(),
            }));
        });
        self.in_flight
            .insert(step_id.to_owned(), InFlight { attempt_id, task });
    }

    /// `{input, steps.<id>.output}` for templates, personal fields opened, and what opening
    /// them met.
    async fn context(&mut self) -> Result<(Value, flowline_personal_data::Opened), AttemptFailure> {
        let mut steps = serde_json::Map::new();
        let succeeded: Vec<(String, Option<String>)> = self
            .state
            .state
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded)
            .map(|s| (s.id.clone(), s.output_ref.clone()))
            .collect();
        for (step_id, reference) in succeeded {
            if !self.outputs.contains_key(&step_id) {
                let output = match &reference {
                    Some(reference) => self
                        .shared
                        .payloads
                        .load(&self.tenant, reference)
                        .await
                        .map_err(|e| {
                            AttemptFailure::transient(
                                "payload_unavailable",
                                format!("output of '{step_id}': {e}"),
                            )
                        })?
                        .unwrap_or(Value::Null),
                    None => self
                        .state
                        .state
                        .step(&step_id)
                        .and_then(|s| s.output.clone())
                        .unwrap_or(Value::Null),
                };
                self.outputs.insert(step_id.clone(), output);
            }
            steps.insert(step_id.clone(), json!({"output": self.outputs[&step_id]}));
        }
        let mut context = json!({"input": self.state.state.input, "steps": steps});
        let opened = self
            .shared
            .vault
            .open(&self.tenant, &mut context)
            .await
            .map_err(|e| AttemptFailure::transient("personal_data_unavailable", e.to_string()))?;
        Ok((context, opened))
    }

    /// `value` as step `step_id`'s events may carry it: sealed with the keys its attempt's
    /// input came from, or as it is when it saw no personal data (`None`: stopped while
    /// the key store was down).
    async fn sealed(&self, step_id: &str, value: &Value) -> Option<Value> {
        let Some(keys) = self.personal.get(step_id) else {
            return Some(value.clone());
        };
        loop {
            match self.shared.vault.seal_with(&self.tenant, keys, value).await {
                Ok(sealed) => return Some(sealed),
                Err(error) => {
                    warn!(workflow_id = %self.id, %error, "personal data not sealed; retrying");
                    if self.pause(Duration::from_millis(500)).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn record_outcome(
        &mut self,
        step_id: &str,
        attempt_id: Uuid,
        result: Result<StepOutput, AttemptFailure>,
        elapsed: Duration,
    ) {
        match result {
            Ok(mut output) => {
                output.value = bounded::without_envelopes(output.value);
                self.record_success(step_id, attempt_id, output, elapsed)
                    .await;
            }
            Err(failure) => {
                let attempt = self
                    .state
                    .state
                    .step(step_id)
                    .and_then(|s| s.running_attempt())
                    .filter(|a| a.attempt_id == attempt_id)
                    .map(|a| a.number);
                if let Some(attempt) = attempt {
                    self.record_failure(step_id, attempt_id, attempt, failure)
                        .await;
                }
            }
        }
    }

    async fn record_success(
        &mut self,
        step_id: &str,
        attempt_id: Uuid,
        output: StepOutput,
        elapsed: Duration,
    ) -> Recorded {
        let StepOutput { value, calls } = output;
        let output = bounded::text_of(value);
        let Some(output) = self.sealed(step_id, &output).await else {
            return Recorded::Stopped;
        };
        let Some((inline, output_ref)) = self.stored(output.clone()).await else {
            return Recorded::Stopped;
        };
        let recorded = self
            .record(WorkflowCommand::Step {
                step_id: step_id.to_owned(),
                command: StepCommand::Succeed {
                    attempt_id,
                    output: inline,
                    output_ref,
                    duration_ms: elapsed.as_millis() as u64,
                    calls,
                },
            })
            .await;
        if matches!(recorded, Recorded::Applied) {
            Metrics::count(&self.shared.metrics.attempts_succeeded);
            self.outputs.insert(step_id.to_owned(), output);
        }
        recorded
    }

    /// What an event carries for `value`: itself, or `null` and the reference of a stored
    /// copy when it is too large for the event (`None`: stopped while the store was down).
    async fn stored(&self, value: Value) -> Option<(Value, Option<String>)> {
        loop {
            match self
                .shared
                .payloads
                .store(&self.tenant, value.clone())
                .await
            {
                Ok(stored) => return Some(stored),
                Err(error) => {
                    warn!(workflow_id = %self.id, %error, "large payload not stored; retrying");
                    if self.pause(Duration::from_millis(500)).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Whether attempt `attempt` of step `index` is the last its retry policy allows.
    fn is_last_attempt(&self, index: usize, attempt: u32) -> bool {
        let policy_attempt = self.state.state.steps[index].policy_attempt(attempt);
        policy_attempt >= self.policies[index].retry.max_attempts
    }

    /// When the attempt after `attempt` of step `index` is due, per its policy with jitter.
    fn next_attempt_at(
        &self,
        index: usize,
        attempt: u32,
        kind: &str,
        retryable: bool,
        retry_after: Option<Duration>,
    ) -> Option<chrono::DateTime<Utc>> {
        schedule::next_attempt_at(
            &self.policies[index],
            self.state.state.steps[index].policy_attempt(attempt),
            kind,
            retryable,
            retry_after,
            Utc::now(),
            rand::rng().random_range(0.0..=1.0),
        )
    }

    async fn record_failure(
        &mut self,
        step_id: &str,
        attempt_id: Uuid,
        attempt: u32,
        failure: AttemptFailure,
    ) -> Recorded {
        let Some(index) = self.step_index(step_id) else {
            return Recorded::Refused;
        };
        let next_attempt_at = self.next_attempt_at(
            index,
            attempt,
            &failure.kind,
            failure.retryable,
            failure.retry_after,
        );
        // An error text may quote what a personal step ran with (a server's answer).
        let message = if self.personal.contains_key(step_id) {
            let shortened: String = failure
                .message
                .chars()
                .take(PERSONAL_MESSAGE_CHARS)
                .collect();
            match self
                .sealed(step_id, &Value::String(bounded::message(&shortened)))
                .await
            {
                Some(Value::String(sealed)) => sealed,
                Some(_) => flowline_domain::personal::ERASED.to_owned(),
                None => return Recorded::Stopped,
            }
        } else {
            bounded::message(&failure.message)
        };
        let recorded = self
            .record(WorkflowCommand::Step {
                step_id: step_id.to_owned(),
                command: StepCommand::Fail {
                    attempt_id,
                    error: StepError {
                        kind: bounded::message(&failure.kind),
                        message,
                    },
                    retryable: failure.retryable,
                    next_attempt_at,
                    calls: failure.calls,
                },
            })
            .await;
        if matches!(recorded, Recorded::Applied) {
            Metrics::count(&self.shared.metrics.attempts_failed);
        }
        recorded
    }

    async fn time_out(&mut self, step_id: &str, attempt_id: Uuid) -> Recorded {
        if let Some(in_flight) = self.in_flight.get(step_id)
            && in_flight.attempt_id == attempt_id
        {
            in_flight.task.abort();
            self.in_flight.remove(step_id);
        }
        let Some(index) = self.step_index(step_id) else {
            return Recorded::Refused;
        };
        let attempt = self.state.state.steps[index]
            .running_attempt()
            .map_or(1, |a| a.number);
        let next_attempt_at = self.next_attempt_at(index, attempt, "timed_out", true, None);
        let recorded = self
            .record(WorkflowCommand::Step {
                step_id: step_id.to_owned(),
                command: StepCommand::TimeOut {
                    attempt_id,
                    next_attempt_at,
                },
            })
            .await;
        if matches!(recorded, Recorded::Applied) {
            Metrics::count(&self.shared.metrics.attempts_timed_out);
        }
        recorded
    }

    /// Decides `command` against the state and appends its event at the next version.
    async fn record(&mut self, command: WorkflowCommand) -> Recorded {
        let mut reloaded = false;
        loop {
            let event = match self.state.state.decide(&command) {
                Ok(event) => event,
                Err(error) => {
                    debug!(workflow_id = %self.id, %error, "decision refused by the aggregate");
                    // Refused after another writer moved the run: the decision was
                    // overtaken, not wrong; planning again from the new state is right.
                    return if reloaded {
                        Recorded::Reloaded
                    } else {
                        Recorded::Refused
                    };
                }
            };
            let envelope = EventEnvelope {
                metadata: EventMetadata {
                    event_id: Uuid::now_v7(),
                    tenant: self.tenant.clone(),
                    stream_id: self.id,
                    stream_version: self.state.version + 1,
                    occurred_at: Utc::now(),
                    command_id: Uuid::now_v7(),
                    correlation_id: self.correlation_id,
                    causation_id: self.last_event_id,
                    traceparent: None,
                    tracestate: None,
                },
                event,
            };
            match self.append(&envelope).await {
                Appended::Yes => {
                    Metrics::count(&self.shared.metrics.appends);
                    self.observe(&envelope);
                    self.shared
                        .repository
                        .after_append(&self.tenant, self.id, &self.state)
                        .await;
                    return Recorded::Applied;
                }
                Appended::Conflict => {
                    // Another writer (a caller's cancel, signal, pause) moved the run: decide
                    // the same command again on the new state, so an attempt's outcome is
                    // never dropped because of a concurrent command.
                    Metrics::count(&self.shared.metrics.append_conflicts);
                    if !self.reload().await {
                        return Recorded::Stopped;
                    }
                    self.orphans_pending = true;
                    self.stop_attempts_of_a_finished_run();
                    reloaded = true;
                }
                Appended::Stopped => return Recorded::Stopped,
            }
        }
    }

    /// Appends `envelope`, retrying failures whose outcome is unknown until it is known.
    async fn append(&self, envelope: &EventEnvelope) -> Appended {
        let store = self.shared.repository.store();
        loop {
            match store.append(envelope, None).await {
                Ok(_) => return Appended::Yes,
                Err(flowline_event_store::Error::VersionConflict { .. }) => {
                    return Appended::Conflict;
                }
                Err(error) => {
                    // The insert may have committed before the error (a lost answer): the
                    // command id tells.
                    if let Ok(Some(_)) = store
                        .find_command(&envelope.metadata.tenant, envelope.metadata.command_id)
                        .await
                    {
                        return Appended::Yes;
                    }
                    warn!(workflow_id = %self.id, %error, "append failed; retrying");
                    if self.pause(Duration::from_millis(200)).await {
                        return Appended::Stopped;
                    }
                }
            }
        }
    }
}

enum Appended {
    Yes,
    Conflict,
    Stopped,
}

/// The first slot granted among the queued requests (pending forever when none is queued).
async fn next_grant(
    queued: &mut HashMap<String, oneshot::Receiver<Slot>>,
) -> (String, Option<Slot>) {
    if queued.is_empty() {
        return std::future::pending().await;
    }
    let (step_id, slot) = futures::future::poll_fn(|cx| {
        for (step_id, receiver) in queued.iter_mut() {
            if let std::task::Poll::Ready(result) =
                std::future::Future::poll(std::pin::Pin::new(receiver), cx)
            {
                return std::task::Poll::Ready((step_id.clone(), result.ok()));
            }
        }
        std::task::Poll::Pending
    })
    .await;
    queued.remove(&step_id);
    (step_id, slot)
}

async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}
