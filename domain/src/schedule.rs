//! The step scheduler's decisions: given a run's state and the time, what should happen
//! next. Pure, so the executor's behaviour is tested here without a clock, a broker or a
//! database, and every executor instance decides the same from the same events.
//!
//! Timers are derived, not stored: every retry backoff, attempt deadline, wait timeout and
//! run deadline is a time recorded on an event, so the next wake-up of a run is a function
//! of its state (see `docs/adr/0016-executor.md`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::event::StepKind;
use crate::policy::{OnFailure, StepPolicy};
use crate::workflow::{StepState, StepStatus, Workflow, WorkflowStatus};

/// One thing the executor should do for a run now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Take up a pending run.
    StartRun,
    /// Start the next attempt of a runnable step.
    StartStep {
        /// The step.
        step_id: String,
    },
    /// A `wait` step's signal is there: complete it with the payload.
    CompleteWait {
        /// The step.
        step_id: String,
        /// Its running attempt.
        attempt_id: Uuid,
        /// The signal's payload (the step's output).
        payload: Value,
    },
    /// A running attempt passed its deadline.
    TimeOutStep {
        /// The step.
        step_id: String,
        /// The attempt.
        attempt_id: Uuid,
    },
    /// The step cannot run: a dependency failed for good.
    SkipStep {
        /// The step.
        step_id: String,
        /// Why.
        reason: String,
    },
    /// Every step finished well: the run succeeded.
    SucceedRun,
    /// The run fails for good.
    FailRun {
        /// Why.
        reason: String,
        /// The step that failed it.
        step_id: Option<String>,
    },
}

/// What to do now, and when to look at the run again if nothing happens before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// In order; each is decided against the state that led to the plan, so after the first
    /// one is recorded the run should be planned again.
    pub decisions: Vec<Decision>,
    /// The earliest future timer of the run (retry due, attempt deadline, run deadline).
    pub wake_at: Option<DateTime<Utc>>,
}

impl Plan {
    fn wake(&mut self, at: DateTime<Utc>) {
        self.wake_at = Some(self.wake_at.map_or(at, |current| current.min(at)));
    }
}

/// Every step's policy, in step order; a config that no longer parses (it was validated at
/// submit) falls back to the defaults rather than stalling the run.
pub fn policies(workflow: &Workflow) -> Vec<StepPolicy> {
    workflow
        .steps
        .iter()
        .map(|step| StepPolicy::parse(step.kind, &step.config, "config").unwrap_or_default())
        .collect()
}

/// Decides what should happen to `workflow` at `now`. `policies` are [`policies`] of it.
pub fn plan(workflow: &Workflow, policies: &[StepPolicy], now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    if !workflow.submitted || workflow.status.is_terminal() {
        return plan;
    }
    if let Some(deadline) = workflow.deadline {
        if deadline <= now {
            plan.decisions.push(Decision::FailRun {
                reason: "timed_out: the run ran past its timeout".into(),
                step_id: None,
            });
            return plan;
        }
        plan.wake(deadline);
    }
    match workflow.status {
        WorkflowStatus::Pending => {
            plan.decisions.push(Decision::StartRun);
            return plan;
        }
        WorkflowStatus::Paused if workflow.started_at.is_none() => return plan,
        _ => {}
    }
    let fatal = workflow.steps.iter().zip(policies).find(|(step, policy)| {
        step.status == StepStatus::Failed && policy.on_failure == OnFailure::FailRun
    });
    if let Some((step, _)) = fatal {
        let why = step
            .error
            .as_ref()
            .map_or_else(String::new, |e| format!(": {}: {}", e.kind, e.message));
        plan.decisions.push(Decision::FailRun {
            reason: format!("step '{}' failed{why}", step.id),
            step_id: Some(step.id.clone()),
        });
        return plan;
    }

    let starting = workflow.status == WorkflowStatus::Running;
    // One lookup table per plan: a step's dependencies are looked up by id for every step.
    let statuses: HashMap<&str, StepStatus> = workflow
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.status))
        .collect();
    let mut signals_taken = HashMap::<&str, usize>::new();
    for (step, policy) in workflow.steps.iter().zip(policies) {
        if step.kind == StepKind::Wait
            && step.status == StepStatus::Succeeded
            && let Some(signal) = &policy.signal
        {
            *signals_taken.entry(signal).or_default() += 1;
        }
    }
    for (step, policy) in workflow.steps.iter().zip(policies) {
        match step.status {
            StepStatus::Running => {
                let Some(attempt) = step.running_attempt() else {
                    continue;
                };
                if step.kind == StepKind::Wait
                    && let Some(signal) = &policy.signal
                {
                    let taken = signals_taken.entry(signal).or_default();
                    let arrived = workflow.signals.iter().filter(|s| &s.name == signal);
                    // A payload in reach of a wait step is always in the state (snapshots
                    // keep those: `Workflow::for_snapshot`).
                    if let Some(received) = arrived.clone().nth(*taken)
                        && let Some(payload) = &received.payload
                    {
                        *taken += 1;
                        plan.decisions.push(Decision::CompleteWait {
                            step_id: step.id.clone(),
                            attempt_id: attempt.attempt_id,
                            payload: payload.clone(),
                        });
                        continue;
                    }
                }
                match attempt.deadline {
                    Some(deadline) if deadline <= now => {
                        plan.decisions.push(Decision::TimeOutStep {
                            step_id: step.id.clone(),
                            attempt_id: attempt.attempt_id,
                        });
                    }
                    Some(deadline) => plan.wake(deadline),
                    None => {}
                }
            }
            StepStatus::Pending | StepStatus::Retrying => {
                match readiness(step, |id| statuses.get(id).copied(), now) {
                    Readiness::Blocked(dependency) => {
                        plan.decisions.push(Decision::SkipStep {
                            step_id: step.id.clone(),
                            reason: format!("dependency '{dependency}' did not succeed"),
                        });
                    }
                    Readiness::DueAt(due) if starting => plan.wake(due),
                    Readiness::Ready if starting => plan.decisions.push(Decision::StartStep {
                        step_id: step.id.clone(),
                    }),
                    Readiness::Waiting | Readiness::DueAt(_) | Readiness::Ready => {}
                }
            }
            StepStatus::Succeeded
            | StepStatus::Failed
            | StepStatus::Skipped
            | StepStatus::Cancelled => {}
        }
    }
    if plan.decisions.is_empty()
        && starting
        && workflow.steps.iter().all(|s| s.status.is_finished())
    {
        plan.decisions.push(Decision::SucceedRun);
    }
    plan
}

/// Where a `pending` or `retrying` step stands.
enum Readiness<'a> {
    /// A dependency failed for good, was skipped or cancelled: the step never runs.
    Blocked(&'a str),
    /// A dependency has not succeeded yet.
    Waiting,
    /// Its dependencies succeeded; its next attempt is due then.
    DueAt(DateTime<Utc>),
    /// It can start now.
    Ready,
}

fn readiness<'a>(
    step: &'a StepState,
    status_of: impl Fn(&str) -> Option<StepStatus>,
    now: DateTime<Utc>,
) -> Readiness<'a> {
    let mut waiting = false;
    for dependency in &step.depends_on {
        match status_of(dependency) {
            Some(StepStatus::Succeeded) => {}
            Some(StepStatus::Failed | StepStatus::Skipped | StepStatus::Cancelled) => {
                return Readiness::Blocked(dependency);
            }
            _ => waiting = true,
        }
    }
    match step.next_attempt_at {
        _ if waiting => Readiness::Waiting,
        Some(due) if due > now => Readiness::DueAt(due),
        _ => Readiness::Ready,
    }
}

/// Whether `step_id` may start its next attempt at `now` (what [`plan`] would decide for
/// it), without planning the whole run.
pub fn may_start(workflow: &Workflow, step_id: &str, now: DateTime<Utc>) -> bool {
    workflow.status == WorkflowStatus::Running
        && workflow.step(step_id).is_some_and(|step| {
            matches!(step.status, StepStatus::Pending | StepStatus::Retrying)
                && matches!(
                    readiness(step, |id| workflow.step(id).map(|d| d.status), now),
                    Readiness::Ready
                )
        })
}

/// When the attempt after failed attempt `attempt` is due, or `None` when the step fails for
/// good: the policy's backoff with `jitter` (0..=1, the caller's randomness), never sooner
/// than a server's `Retry-After`.
pub fn next_attempt_at(
    policy: &StepPolicy,
    attempt: u32,
    error_kind: &str,
    retryable: bool,
    retry_after: Option<std::time::Duration>,
    now: DateTime<Utc>,
    jitter: f64,
) -> Option<DateTime<Utc>> {
    if !policy.retry.retries(attempt, error_kind, retryable) {
        return None;
    }
    crate::policy::deadline(now, Some(policy.retry.delay(attempt, jitter, retry_after)))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::aggregate::{Aggregate, Versioned};
    use crate::command::{SendSignal, StepCommand, StepSpec, SubmitWorkflow, WorkflowCommand};
    use crate::event::StepError;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, 0).unwrap() + chrono::Duration::seconds(second)
    }

    fn step(id: &str, kind: &str, depends_on: &[&str], config: Value) -> StepSpec {
        StepSpec {
            id: id.into(),
            kind: kind.into(),
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
            config: Some(config),
        }
    }

    /// A run driven through the aggregate, as the executor drives it.
    struct Run(Versioned<Workflow>);

    impl Run {
        fn submitted(steps: Vec<StepSpec>, timeout: Option<&str>) -> Self {
            let mut run = Run(Versioned::default());
            run.when(WorkflowCommand::Submit(SubmitWorkflow {
                name: "t".into(),
                input: Some(json!({"n": 1})),
                steps,
                timeout: timeout.map(str::to_owned),
                subject: None,
                submitted_by: None,
            }));
            run
        }

        fn when(&mut self, command: WorkflowCommand) -> &mut Self {
            let event = self.0.state.decide(&command).expect("accepted");
            self.0.apply(&event);
            self
        }

        fn plan(&self, now: DateTime<Utc>) -> Plan {
            plan(&self.0.state, &policies(&self.0.state), now)
        }

        fn start_step(
            &mut self,
            id: &str,
            now: DateTime<Utc>,
            deadline: Option<DateTime<Utc>>,
        ) -> Uuid {
            let attempt_id = Uuid::now_v7();
            self.when(WorkflowCommand::Step {
                step_id: id.into(),
                command: StepCommand::Start {
                    attempt_id,
                    input: json!({}),
                    started_at: now,
                    deadline,
                },
            });
            attempt_id
        }

        fn succeed(&mut self, id: &str, attempt_id: Uuid) -> &mut Self {
            self.when(WorkflowCommand::Step {
                step_id: id.into(),
                command: StepCommand::Succeed {
                    attempt_id,
                    output: json!("ok"),
                    output_ref: None,
                    duration_ms: 1,
                    calls: vec![],
                },
            })
        }

        fn fail(&mut self, id: &str, attempt_id: Uuid, next: Option<DateTime<Utc>>) -> &mut Self {
            self.when(WorkflowCommand::Step {
                step_id: id.into(),
                command: StepCommand::Fail {
                    attempt_id,
                    error: StepError {
                        kind: "http_status".into(),
                        message: "503".into(),
                    },
                    retryable: true,
                    next_attempt_at: next,
                    calls: vec![],
                },
            })
        }
    }

    fn started(ids: &[&str]) -> Vec<Decision> {
        ids.iter()
            .map(|id| Decision::StartStep {
                step_id: (*id).into(),
            })
            .collect()
    }

    #[test]
    fn a_pending_run_is_started_then_its_roots_run_then_what_they_unblock() {
        let mut run = Run::submitted(
            vec![
                step("a", "template", &[], json!({})),
                step("b", "template", &["a"], json!({})),
                step("c", "template", &["a"], json!({})),
                step("d", "template", &["b", "c"], json!({})),
            ],
            None,
        );
        assert_eq!(run.plan(at(0)).decisions, vec![Decision::StartRun]);
        run.when(WorkflowCommand::Start { started_at: at(0) });
        assert_eq!(run.plan(at(0)).decisions, started(&["a"]));
        let a = run.start_step("a", at(0), None);
        assert!(run.plan(at(1)).decisions.is_empty());
        run.succeed("a", a);
        // Independent branches are runnable together.
        assert_eq!(run.plan(at(1)).decisions, started(&["b", "c"]));
        let b = run.start_step("b", at(1), None);
        let c = run.start_step("c", at(1), None);
        run.succeed("b", b);
        assert!(run.plan(at(2)).decisions.is_empty(), "d waits for c");
        run.succeed("c", c);
        let d = run.start_step("d", at(2), None);
        run.succeed("d", d);
        assert_eq!(run.plan(at(3)).decisions, vec![Decision::SucceedRun]);
        run.when(WorkflowCommand::Succeed);
        assert_eq!(run.0.state.status, WorkflowStatus::Succeeded);
        assert_eq!(run.plan(at(4)), Plan::default());
    }

    #[test]
    fn a_retry_waits_for_its_due_time_and_a_failure_for_good_fails_the_run() {
        let mut run = Run::submitted(vec![step("a", "http", &[], json!({}))], None);
        run.when(WorkflowCommand::Start { started_at: at(0) });
        let first = run.start_step("a", at(0), None);
        run.fail("a", first, Some(at(3)));
        assert_eq!(run.0.state.steps[0].status, StepStatus::Retrying);
        let plan = run.plan(at(2));
        assert!(plan.decisions.is_empty(), "never early");
        assert_eq!(plan.wake_at, Some(at(3)));
        assert_eq!(run.plan(at(3)).decisions, started(&["a"]));
        let second = run.start_step("a", at(3), None);
        assert_eq!(run.0.state.steps[0].attempts[1].number, 2);
        run.fail("a", second, None);
        assert!(matches!(
            &run.plan(at(4)).decisions[..],
            [Decision::FailRun { step_id: Some(s), .. }] if s == "a"
        ));
    }

    #[test]
    fn an_outcome_is_recorded_once_per_attempt() {
        let mut run = Run::submitted(vec![step("a", "http", &[], json!({}))], None);
        run.when(WorkflowCommand::Start { started_at: at(0) });
        let attempt = run.start_step("a", at(0), None);
        run.succeed("a", attempt);
        let again = WorkflowCommand::Step {
            step_id: "a".into(),
            command: StepCommand::Succeed {
                attempt_id: attempt,
                output: json!(1),
                output_ref: None,
                duration_ms: 1,
                calls: vec![],
            },
        };
        assert!(matches!(
            run.0.state.decide(&again),
            Err(crate::DomainError::StaleAttempt { .. })
        ));
        let restart = WorkflowCommand::Step {
            step_id: "a".into(),
            command: StepCommand::Start {
                attempt_id: Uuid::now_v7(),
                input: json!({}),
                started_at: at(1),
                deadline: None,
            },
        };
        assert!(matches!(
            run.0.state.decide(&restart),
            Err(crate::DomainError::InvalidStepTransition { .. })
        ));
    }

    #[test]
    fn deadlines_fire_at_their_time_not_before() {
        let mut run = Run::submitted(vec![step("a", "http", &[], json!({}))], Some("10s"));
        run.when(WorkflowCommand::Start { started_at: at(0) });
        let attempt = run.start_step("a", at(0), Some(at(2)));
        let plan = run.plan(at(1));
        assert!(plan.decisions.is_empty());
        assert_eq!(plan.wake_at, Some(at(2)));
        assert_eq!(
            run.plan(at(2)).decisions,
            vec![Decision::TimeOutStep {
                step_id: "a".into(),
                attempt_id: attempt
            }]
        );
        assert!(matches!(
            &run.plan(at(10)).decisions[..],
            [Decision::FailRun { step_id: None, .. }]
        ));
    }

    #[test]
    fn a_wait_step_takes_its_signal_whenever_it_arrived() {
        let mut run = Run::submitted(
            vec![
                step(
                    "approve",
                    "wait",
                    &[],
                    json!({"signal": "approval", "timeout": "1m"}),
                ),
                step("again", "wait", &["approve"], json!({"signal": "approval"})),
            ],
            None,
        );
        run.when(WorkflowCommand::Start { started_at: at(0) });
        let first = run.start_step("approve", at(0), Some(at(60)));
        assert_eq!(run.plan(at(1)).wake_at, Some(at(60)));
        run.when(WorkflowCommand::Signal(SendSignal {
            name: "approval".into(),
            payload: json!({"by": "ana"}),
        }));
        assert_eq!(
            run.plan(at(2)).decisions,
            vec![Decision::CompleteWait {
                step_id: "approve".into(),
                attempt_id: first,
                payload: json!({"by": "ana"})
            }]
        );
        run.succeed("approve", first);
        // The first signal was taken: the second wait needs a second one.
        let second = run.start_step("again", at(3), None);
        assert!(run.plan(at(3)).decisions.is_empty());
        run.when(WorkflowCommand::Signal(SendSignal {
            name: "approval".into(),
            payload: json!(2),
        }));
        assert!(matches!(
            &run.plan(at(4)).decisions[..],
            [Decision::CompleteWait { attempt_id, payload, .. }] if *attempt_id == second && *payload == json!(2)
        ));
    }

    #[test]
    fn a_step_that_may_fail_lets_the_run_go_on_and_its_dependents_are_skipped() {
        let mut run = Run::submitted(
            vec![
                step("a", "http", &[], json!({"on_failure": "continue"})),
                step("b", "template", &["a"], json!({})),
                step("c", "template", &[], json!({})),
            ],
            None,
        );
        run.when(WorkflowCommand::Start { started_at: at(0) });
        let a = run.start_step("a", at(0), None);
        run.fail("a", a, None);
        let decisions = run.plan(at(1)).decisions;
        assert_eq!(
            decisions,
            vec![
                Decision::SkipStep {
                    step_id: "b".into(),
                    reason: "dependency 'a' did not succeed".into()
                },
                Decision::StartStep {
                    step_id: "c".into()
                }
            ]
        );
        run.when(WorkflowCommand::Step {
            step_id: "b".into(),
            command: StepCommand::Skip { reason: "x".into() },
        });
        let c = run.start_step("c", at(1), None);
        run.succeed("c", c);
        assert_eq!(run.plan(at(2)).decisions, vec![Decision::SucceedRun]);
    }

    #[test]
    fn a_paused_run_starts_nothing_and_a_retried_step_runs_again() {
        let mut run = Run::submitted(
            vec![
                step("a", "http", &[], json!({})),
                step("b", "template", &["a"], json!({})),
            ],
            None,
        );
        run.when(WorkflowCommand::Start { started_at: at(0) });
        run.when(WorkflowCommand::Pause(Default::default()));
        assert!(run.plan(at(0)).decisions.is_empty());
        run.when(WorkflowCommand::Resume);
        assert_eq!(run.plan(at(0)).decisions, started(&["a"]));
        let a = run.start_step("a", at(0), None);
        run.fail("a", a, None);
        run.when(WorkflowCommand::Fail {
            reason: "step a failed".into(),
            step_id: Some("a".into()),
        });
        assert_eq!(run.0.state.steps[1].status, StepStatus::Cancelled);
        run.when(WorkflowCommand::Step {
            step_id: "a".into(),
            command: StepCommand::Retry,
        });
        assert_eq!(run.0.state.status, WorkflowStatus::Running);
        assert_eq!(run.0.state.steps[1].status, StepStatus::Pending);
        assert_eq!(run.plan(at(5)).decisions, started(&["a"]));
        run.start_step("a", at(5), None);
        assert_eq!(run.0.state.steps[0].attempts.len(), 2);
        // The policy counts attempts from the caller's retry: attempt 2 is its first.
        assert_eq!(run.0.state.steps[0].policy_attempt(2), 1);
    }

    #[test]
    fn the_next_attempt_follows_the_policy() {
        let policy = StepPolicy::parse(
            StepKind::Http,
            &json!({"retry": {"max_attempts": 3, "initial_interval": "1s"}}),
            "c",
        )
        .unwrap();
        let due = |attempt, retry_after| {
            next_attempt_at(
                &policy,
                attempt,
                "http_status",
                true,
                retry_after,
                at(0),
                1.0,
            )
        };
        assert_eq!(due(1, None), Some(at(1)));
        assert_eq!(due(2, None), Some(at(2)));
        assert_eq!(due(1, Some(std::time::Duration::from_secs(5))), Some(at(5)));
        assert_eq!(due(3, None), None);
    }
}
