//! Liveness and readiness: `/livez` answers while the process serves; `/readyz` answers
//! 200 only when every dependency probe passes (PostgreSQL, the broker, Redis — each
//! service registers the ones it uses) and every background task it registered is running.
//!
//! Background tasks are supervised: [`Health::supervise`] restarts a Tokio task that
//! panicked or ended on its own (with back-off), and reports it not ready until it runs
//! again; a task on a thread of its own holds a [`TaskReport`], which marks it failed when
//! the thread unwinds, or halted when the task stops itself on purpose (a projection that
//! refuses to skip records). Either keeps `/readyz` failing, with the reason, until an
//! operator acts: a halted or dead task must not be hidden behind a green probe.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Longest a dependency probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// First pause before a supervised task is restarted; it doubles up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(250);
/// Longest pause between two restarts.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// A dependency probe: `Err(why)` when the dependency cannot be used.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What a background task is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum TaskState {
    /// Working.
    Running,
    /// Panicked or ended on its own; being restarted.
    Restarting(String),
    /// Stopped itself on purpose and waits for an operator.
    Halted(String),
    /// Died and is not restarted.
    Failed(String),
    /// Stopped because the service is stopping.
    Stopped,
}

impl TaskState {
    fn is_ready(&self) -> bool {
        matches!(self, Self::Running | Self::Stopped)
    }
}

#[derive(Default)]
struct Inner {
    probes: Mutex<Vec<(String, Probe)>>,
    tasks: Mutex<BTreeMap<String, TaskState>>,
}

/// A service's health: cheap to clone, shared by its tasks and its HTTP routes.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("tasks", &*self.inner.tasks.lock().expect("health lock"))
            .finish_non_exhaustive()
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Whether every check passed.
    pub ready: bool,
    /// Dependency → `"ok"` or why it failed.
    pub dependencies: BTreeMap<String, String>,
    /// Background task → its state.
    pub tasks: BTreeMap<String, TaskState>,
}

impl Health {
    /// No probes and no tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a dependency probe under `name`.
    pub fn probe<F, Fut>(&self, name: &str, probe: F) -> &Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let probe: Probe = Arc::new(move || Box::pin(probe()));
        self.inner
            .probes
            .lock()
            .expect("health lock")
            .push((name.to_owned(), probe));
        self
    }

    /// Adds a PostgreSQL probe: one `SELECT 1` on `pool`.
    pub fn postgres(&self, pool: PgPool) -> &Self {
        self.probe("postgres", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
        })
    }

    /// Adds a broker probe: a metadata request for `topic` to `brokers` on a fresh client.
    pub fn kafka(&self, brokers: &str, topic: &str) -> &Self {
        let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
        self.probe("kafka", move || {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            async move {
                flowline_event_log::reachable(&brokers, &topic, PROBE_TIMEOUT / 2)
                    .await
                    .map_err(|error| error.to_string())
            }
        })
    }

    /// Adds a Redis probe: a `PING` on a fresh connection to `url`.
    pub fn redis(&self, url: &str) -> &Self {
        let url = url.to_owned();
        self.probe("redis", move || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).map_err(|error| error.to_string())?;
                let mut connection = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|error| error.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
        })
    }

    /// Registers a task that reports its own state (one on a thread of its own); it
    /// counts as running until the report says otherwise.
    pub fn task(&self, name: &str) -> TaskReport {
        let report = TaskReport {
            health: self.clone(),
            name: name.to_owned(),
        };
        report.set(TaskState::Running);
        report
    }

    /// Runs `start()` as a Tokio task under `name` and starts it again, after a pause that
    /// grows, whenever it panics or ends while `stop` is not cancelled. `/readyz` fails
    /// from the failure until the new task is started.
    pub fn supervise<F, Fut>(
        &self,
        name: &str,
        stop: CancellationToken,
        start: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let report = self.task(name);
        tokio::spawn(async move {
            let mut delay = FIRST_RESTART_DELAY;
            loop {
                report.set(TaskState::Running);
                // Aborted with the supervisor: a dropped supervisor leaves no task behind.
                let mut task = AbortOnDrop(tokio::spawn(start()));
                let outcome = (&mut task.0).await;
                if stop.is_cancelled() {
                    report.set(TaskState::Stopped);
                    return;
                }
                let why = match outcome {
                    Ok(()) => "ended on its own".to_owned(),
                    Err(error) if error.is_panic() => format!("panicked: {}", panic_text(error)),
                    Err(error) => error.to_string(),
                };
                tracing::error!(task = %report.name, %why, ?delay, "background task failed; restarting it");
                report.set(TaskState::Restarting(why));
                tokio::select! {
                    () = stop.cancelled() => {
                        report.set(TaskState::Stopped);
                        return;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RESTART_DELAY);
            }
        })
    }

    /// Runs `task` as a Tokio task under `name`, without restarting it (for a task whose
    /// second copy could act twice while work the first started still runs): a panic, or
    /// an end while `stop` is not cancelled, leaves it failed and `/readyz` failing.
    pub fn watch(
        &self,
        name: &str,
        stop: CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let report = self.task(name);
        tokio::spawn(async move {
            let mut task = AbortOnDrop(tokio::spawn(task));
            let outcome = (&mut task.0).await;
            let state = match outcome {
                _ if stop.is_cancelled() => TaskState::Stopped,
                Ok(()) => TaskState::Failed("ended on its own".into()),
                Err(error) if error.is_panic() => {
                    TaskState::Failed(format!("panicked: {}", panic_text(error)))
                }
                Err(error) => TaskState::Failed(error.to_string()),
            };
            if state != TaskState::Stopped {
                tracing::error!(task = %report.name, ?state, "background task failed");
            }
            report.set(state);
        })
    }

    /// Probes every dependency (concurrently, each bounded by [`PROBE_TIMEOUT`]) and reads
    /// every task's state.
    pub async fn readiness(&self) -> Readiness {
        let probes = self.inner.probes.lock().expect("health lock").clone();
        let mut running = tokio::task::JoinSet::new();
        for (name, probe) in probes {
            running.spawn(async move {
                let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
                    Ok(Ok(())) => "ok".to_owned(),
                    Ok(Err(why)) => why,
                    Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
                };
                (name, outcome)
            });
        }
        let mut dependencies = BTreeMap::new();
        while let Some(joined) = running.join_next().await {
            let (name, outcome) =
                joined.unwrap_or_else(|error| ("probe".to_owned(), error.to_string()));
            dependencies.insert(name, outcome);
        }
        let tasks = self.inner.tasks.lock().expect("health lock").clone();
        let ready = dependencies.values().all(|outcome| outcome == "ok")
            && tasks.values().all(TaskState::is_ready);
        Readiness {
            ready,
            dependencies,
            tasks,
        }
    }

    /// `GET /livez` (200 while the process serves) and [`Health::readiness_route`], for
    /// any router state.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        self.readiness_route()
            .route("/livez", get(|| async { "ok" }))
    }

    /// `GET /readyz`: 200 when ready, 503 with the same body (what failed, and why) when
    /// not.
    pub fn readiness_route<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let health = self.clone();
        Router::new().route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    let readiness = health.readiness().await;
                    let status = if readiness.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(readiness)).into_response()
                }
            }),
        )
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_text(error: tokio::task::JoinError) -> String {
    panic_message(&*error.into_panic())
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// How a task reports its state. Dropped while its thread unwinds from a panic, it marks
/// the task failed.
#[derive(Clone)]
pub struct TaskReport {
    health: Health,
    name: String,
}

impl std::fmt::Debug for TaskReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskReport")
            .field("name", &self.name)
            .finish()
    }
}

impl TaskReport {
    /// Sets the task's state.
    pub fn set(&self, state: TaskState) {
        self.health
            .inner
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.name.clone(), state);
    }

    /// Stops counting the task as ready, saying why, until [`TaskReport::resume`].
    pub fn halt(&self, reason: impl Into<String>) {
        self.set(TaskState::Halted(reason.into()));
    }

    /// Counts the task as running again.
    pub fn resume(&self) {
        self.set(TaskState::Running);
    }

    /// The task's current state.
    pub fn state(&self) -> Option<TaskState> {
        self.health
            .inner
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&self.name)
            .cloned()
    }
}

impl Drop for TaskReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.set(TaskState::Failed("panicked".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_not_ready_meanwhile() {
        let health = Health::new();
        let stop = CancellationToken::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&starts);
        let (release, released) = tokio::sync::watch::channel(false);
        health.supervise("relay", stop.clone(), move || {
            let start = counted.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            async move {
                if start == 0 {
                    let _ = released.wait_for(|go| *go).await;
                    panic!("boom");
                }
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(health.readiness().await.ready);
        release.send(true).unwrap();
        let mut seen_restarting = false;
        for _ in 0..200 {
            let readiness = health.readiness().await;
            if let Some(TaskState::Restarting(why)) = readiness.tasks.get("relay") {
                assert!(why.contains("boom"), "{why}");
                assert!(!readiness.ready);
                seen_restarting = true;
            }
            if starts.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(seen_restarting, "the failure showed in readiness");
        assert_eq!(starts.load(Ordering::SeqCst), 2, "restarted once");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(health.readiness().await.ready, "ready again once restarted");
        stop.cancel();
    }

    #[test]
    fn a_thread_that_panics_leaves_its_task_failed() {
        let health = Health::new();
        let report = health.task("projector");
        let joined = std::thread::spawn(move || {
            let _report = report;
            panic!("handler bug");
        })
        .join();
        assert!(joined.is_err());
        let tasks = health.inner.tasks.lock().unwrap().clone();
        assert_eq!(tasks["projector"], TaskState::Failed("panicked".into()));
    }

    #[tokio::test]
    async fn a_failing_probe_or_a_halted_task_makes_it_unready() {
        let health = Health::new();
        health.probe("broker", || async { Ok(()) });
        assert!(health.readiness().await.ready);
        let report = health.task("projection");
        report.halt("checkpoint ahead of the log");
        let readiness = health.readiness().await;
        assert!(!readiness.ready);
        report.resume();
        assert!(health.readiness().await.ready);
        health.probe("postgres", || async {
            Err("connection refused".to_owned())
        });
        let readiness = health.readiness().await;
        assert!(!readiness.ready);
        assert_eq!(readiness.dependencies["postgres"], "connection refused");
        assert_eq!(readiness.dependencies["broker"], "ok");
    }
}
