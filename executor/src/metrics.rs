//! The executor's counters, rendered for Prometheus at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A gauge's name, help text, and values by label set (`{tenant="a"}` or empty).
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, u64)>);

/// Monotonic counters (gauges are read from their owners when rendered).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Runs taken up.
    pub runs_started: AtomicU64,
    /// Runs ended `succeeded`.
    pub runs_succeeded: AtomicU64,
    /// Runs ended `failed`.
    pub runs_failed: AtomicU64,
    /// Attempts started.
    pub attempts_started: AtomicU64,
    /// Attempts succeeded.
    pub attempts_succeeded: AtomicU64,
    /// Attempts failed (lost ones included).
    pub attempts_failed: AtomicU64,
    /// Attempts timed out.
    pub attempts_timed_out: AtomicU64,
    /// Attempts found running when a run was taken over (their executor stopped).
    pub attempts_lost: AtomicU64,
    /// Events appended.
    pub appends: AtomicU64,
    /// Appends that lost a race with another writer (the run was reloaded).
    pub append_conflicts: AtomicU64,
    /// Attempts whose runner panicked (each recorded as a failed attempt).
    pub runner_panics: AtomicU64,
    /// Run actors that panicked (each restarted from the store).
    pub actor_panics: AtomicU64,
    /// Live output entries (streamed text, progress) dropped: queue full or Redis failing.
    pub live_entries_dropped: AtomicU64,
}

impl Metrics {
    /// Adds one.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text format, with the gauges given.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut text = String::new();
        let counters = [
            (
                "flowline_executor_runs_started_total",
                "Runs taken up",
                &self.runs_started,
            ),
            (
                "flowline_executor_runs_succeeded_total",
                "Runs that succeeded",
                &self.runs_succeeded,
            ),
            (
                "flowline_executor_runs_failed_total",
                "Runs that failed",
                &self.runs_failed,
            ),
            (
                "flowline_executor_attempts_started_total",
                "Step attempts started",
                &self.attempts_started,
            ),
            (
                "flowline_executor_attempts_succeeded_total",
                "Step attempts that succeeded",
                &self.attempts_succeeded,
            ),
            (
                "flowline_executor_attempts_failed_total",
                "Step attempts that failed",
                &self.attempts_failed,
            ),
            (
                "flowline_executor_attempts_timed_out_total",
                "Step attempts that timed out",
                &self.attempts_timed_out,
            ),
            (
                "flowline_executor_attempts_lost_total",
                "Running attempts found orphaned on takeover",
                &self.attempts_lost,
            ),
            (
                "flowline_executor_appends_total",
                "Events appended",
                &self.appends,
            ),
            (
                "flowline_executor_append_conflicts_total",
                "Appends that lost a race",
                &self.append_conflicts,
            ),
            (
                "flowline_executor_runner_panics_total",
                "Step attempts whose runner panicked (recorded as failed attempts)",
                &self.runner_panics,
            ),
            (
                "flowline_executor_actor_panics_total",
                "Run actors that panicked and were restarted from the store",
                &self.actor_panics,
            ),
            (
                "flowline_executor_live_entries_dropped_total",
                "Live step output entries dropped (queue full or Redis failing)",
                &self.live_entries_dropped,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        for (name, help, values) in gauges {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in values {
                let _ = writeln!(text, "{name}{labels} {value}");
            }
        }
        text
    }
}
