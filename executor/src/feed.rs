//! Where the executor learns of events: the published log as the event store holds it,
//! read partition by partition in log order (woken by the relay's `NOTIFY`, polled as a
//! fallback), for the partitions this process leases. Each event goes to its run's actor;
//! the set of live runs and the position reached are committed together, so a process
//! taking a partition over loads exactly the runs that still need driving and reads on
//! from where the last owner stopped.
//!
//! Reading the store rather than consuming the broker keeps every executor off tansu's
//! fetch path (each tailing consumer there slows every producer several-fold); the log
//! and the store hold the same records at the same places (ADR 14), so a Kafka consumer
//! can replace this reader without changing anything else (see ADR 16).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowline_domain::{EventEnvelope, WorkflowEvent};
use flowline_event_store::WorkflowRepository;
use flowline_service_kit::leases::Leases;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::dispatch::Dispatcher;
use crate::live::LiveHub;
use crate::metrics::Metrics;
use crate::payloads::Payloads;
use crate::render::Renderer;
use crate::run::{self, Origin, RunHandle, RunMessage, RunSummary};
use crate::runners::Runners;

/// Events read per partition per round.
const READ_BATCH: i64 = 1_000;
/// How often a partition is read when no notification came.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Runs remembered as finished (to skip their late-read events without loading them).
const RETIRED_CAPACITY: usize = 100_000;

#[derive(Default)]
struct Registry {
    runs: HashMap<Uuid, RunHandle>,
    /// Finished runs whose actor retired, with the version they ended at.
    retired: HashMap<Uuid, u64>,
}

/// What every actor and partition reader of this process shares.
pub(crate) struct Shared {
    pub(crate) repository: WorkflowRepository,
    pub(crate) pool: PgPool,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) runners: Runners,
    pub(crate) renderer: Renderer,
    pub(crate) payloads: Payloads,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) default_http_timeout: Duration,
    pub(crate) live: LiveHub,
    /// Opens personal fields for templates and seals what steps derive from them (ADR 26).
    pub(crate) vault: flowline_personal_data::Vault,
    registry: Mutex<Registry>,
    wakers: HashMap<i32, Arc<Notify>>,
}

/// Everything needed to build [`Shared`].
pub(crate) struct Parts {
    pub(crate) repository: WorkflowRepository,
    pub(crate) pool: PgPool,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) runners: Runners,
    pub(crate) payloads: Payloads,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) default_http_timeout: Duration,
    pub(crate) partitions: i32,
    pub(crate) live: LiveHub,
}

impl Shared {
    pub(crate) fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Self {
            repository: parts.repository,
            vault: flowline_personal_data::Vault::new(parts.pool.clone()),
            pool: parts.pool,
            dispatcher: parts.dispatcher,
            runners: parts.runners,
            renderer: Renderer,
            payloads: parts.payloads,
            metrics: parts.metrics,
            default_http_timeout: parts.default_http_timeout,
            live: parts.live,
            registry: Mutex::new(Registry::default()),
            wakers: (0..parts.partitions)
                .map(|p| (p, Arc::new(Notify::new())))
                .collect(),
        })
    }

    /// What `/admin/runs` shows.
    pub(crate) fn summaries(&self) -> Vec<RunSummary> {
        let registry = self.registry.lock().expect("registry lock");
        let mut runs: Vec<RunSummary> = registry
            .runs
            .values()
            .map(|handle| handle.summary.lock().expect("summary lock").clone())
            .collect();
        runs.sort_by_key(|run| run.workflow_id);
        runs
    }

    /// Runs with an actor here.
    pub(crate) fn active_runs(&self) -> usize {
        self.registry.lock().expect("registry lock").runs.len()
    }

    /// Removes an actor that stopped (unless another one took its place meanwhile).
    pub(crate) fn unregister(&self, id: Uuid, inbox: &mpsc::UnboundedSender<RunMessage>) {
        let mut registry = self.registry.lock().expect("registry lock");
        if registry
            .runs
            .get(&id)
            .is_some_and(|handle| handle.inbox.same_channel(inbox))
        {
            registry.runs.remove(&id);
        }
    }

    /// Lets a finished run's actor go, unless a message reached it meanwhile; the feed
    /// sends under the same lock, so nothing sent to it is lost.
    pub(crate) fn try_retire(
        &self,
        id: Uuid,
        inbox: &mut mpsc::UnboundedReceiver<RunMessage>,
        version: u64,
    ) -> bool {
        let mut registry = self.registry.lock().expect("registry lock");
        if !inbox.is_empty() {
            return false;
        }
        registry.runs.remove(&id);
        if registry.retired.len() >= RETIRED_CAPACITY {
            registry.retired.clear();
        }
        registry.retired.insert(id, version);
        true
    }

    /// Hands an event to its run's actor, starting one when the run has none here.
    fn route(self: &Arc<Self>, envelope: EventEnvelope, partition: i32, stop: &CancellationToken) {
        let id = envelope.metadata.stream_id;
        let version = envelope.metadata.stream_version;
        let mut registry = self.registry.lock().expect("registry lock");
        let envelope = match registry.runs.get(&id).filter(|h| !h.stop.is_cancelled()) {
            Some(handle) => match handle.inbox.send(RunMessage::Event(Box::new(envelope))) {
                Ok(()) => return,
                Err(mpsc::error::SendError(RunMessage::Event(envelope))) => {
                    registry.runs.remove(&id);
                    *envelope
                }
                Err(_) => return,
            },
            None => envelope,
        };
        if registry
            .retired
            .get(&id)
            .is_some_and(|&ended| version <= ended)
        {
            return; // an event the retired actor already recorded or saw
        }
        let origin = match &envelope.event {
            WorkflowEvent::Submitted(_) if version == 1 => {
                Origin::Submitted(Box::new(envelope.clone()))
            }
            // A run unknown here that just ended has nothing left to drive.
            WorkflowEvent::Succeeded(_)
            | WorkflowEvent::Failed(_)
            | WorkflowEvent::Cancelled(_) => {
                return;
            }
            _ => Origin::Stored,
        };
        registry.retired.remove(&id);
        let handle = run::spawn(
            Arc::clone(self),
            id,
            envelope.metadata.tenant.clone(),
            partition,
            origin,
            stop.child_token(),
            0,
        );
        registry.runs.insert(id, handle);
    }

    /// Starts a new actor for run `id` in place of one that panicked (whose inbox is
    /// `dead`), unless the run got another actor meanwhile or was let go.
    pub(crate) fn restart_actor(
        self: &Arc<Self>,
        id: Uuid,
        tenant: &str,
        partition: i32,
        dead: &mpsc::UnboundedSender<RunMessage>,
        stop: CancellationToken,
        restarts: u32,
    ) {
        let mut registry = self.registry.lock().expect("registry lock");
        if !registry
            .runs
            .get(&id)
            .is_some_and(|handle| handle.inbox.same_channel(dead))
        {
            return;
        }
        let handle = run::spawn(
            Arc::clone(self),
            id,
            tenant.to_owned(),
            partition,
            Origin::Stored,
            stop,
            restarts,
        );
        registry.runs.insert(id, handle);
    }

    /// Starts actors for the live runs of a partition just taken over.
    fn adopt(
        self: &Arc<Self>,
        live: Vec<(Uuid, String)>,
        partition: i32,
        stop: &CancellationToken,
    ) {
        let mut registry = self.registry.lock().expect("registry lock");
        for (id, tenant) in live {
            // An actor of a partition given up earlier may still be finishing: replace it.
            if registry
                .runs
                .get(&id)
                .is_some_and(|h| !h.stop.is_cancelled())
            {
                continue;
            }
            registry.retired.remove(&id);
            let handle = run::spawn(
                Arc::clone(self),
                id,
                tenant,
                partition,
                Origin::Stored,
                stop.child_token(),
                0,
            );
            registry.runs.insert(id, handle);
        }
    }

    fn wake(&self, partition: i32) {
        if let Some(waker) = self.wakers.get(&partition) {
            waker.notify_one();
        }
    }

    fn wake_all(&self) {
        for waker in self.wakers.values() {
            waker.notify_one();
        }
    }
}

/// Takes partitions through leases and works the ones held, until `stop`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    leases: Leases,
    lease_ttl: Duration,
    stop: CancellationToken,
) {
    // Everything this feed starts (the listener, partition workers, their run actors)
    // lives in its scope and stops when the feed ends, also by a panic: the feed is
    // restarted by its supervisor, and a new one must not find the old one's workers still
    // driving the same partitions.
    let scope = stop.child_token();
    let _scope_ends_with_the_feed = scope.clone().drop_guard();
    tokio::spawn(listen(
        Arc::clone(&shared),
        shared.pool.clone(),
        scope.clone(),
    ));
    let mut owned: HashMap<i32, CancellationToken> = HashMap::new();
    let mut last_renewed = Instant::now();
    loop {
        // The leases run from before the call: a slow renewal must not make this process
        // believe it holds them longer than the database says.
        let asked = Instant::now();
        match tokio::time::timeout(lease_ttl / 3, leases.renew()).await {
            Ok(Ok(now_owned)) => {
                last_renewed = asked;
                take(&shared, &mut owned, &now_owned, &scope);
            }
            outcome => {
                match outcome {
                    Ok(Err(error)) => warn!(%error, "leases not renewed"),
                    _ => warn!("lease renewal timed out"),
                }
                // Give up before they expire, so another process never drives them too.
                if last_renewed.elapsed() >= lease_ttl.mul_f64(0.8) {
                    // Others may own them by now: stop rather than drive runs twice.
                    take(&shared, &mut owned, &BTreeSet::new(), &scope);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(lease_ttl / 5) => {}
        }
    }
    for (_, token) in owned.drain() {
        token.cancel();
    }
    if let Err(error) = leases.release().await {
        warn!(%error, "leases not released; they expire");
    }
}

fn take(
    shared: &Arc<Shared>,
    owned: &mut HashMap<i32, CancellationToken>,
    now_owned: &BTreeSet<i32>,
    stop: &CancellationToken,
) {
    owned.retain(|partition, token| {
        let keep = now_owned.contains(partition);
        if !keep {
            info!(partition, "partition given up");
            token.cancel();
        }
        keep
    });
    for &partition in now_owned {
        if owned.contains_key(&partition) {
            continue;
        }
        info!(partition, "partition taken");
        let token = stop.child_token();
        owned.insert(partition, token.clone());
        tokio::spawn(work_partition(Arc::clone(shared), partition, token));
    }
}

async fn listen(shared: Arc<Shared>, pool: PgPool, stop: CancellationToken) {
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen(flowline_event_store::PUBLISHED_CHANNEL)
                .await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = stop.cancelled() => return,
            listener = connected => match listener {
                Ok(listener) => listener,
                Err(error) => {
                    warn!(%error, "publication listener not connected; polling");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        shared.wake_all();
        loop {
            let notification = tokio::select! {
                () = stop.cancelled() => return,
                notification = listener.recv() => notification,
            };
            match notification {
                Ok(notification) => {
                    for (_, place) in flowline_event_store::parse_published(notification.payload())
                    {
                        shared.wake(place.partition);
                    }
                }
                Err(error) => {
                    warn!(%error, "publication listener lost; polling");
                    shared.wake_all();
                    break;
                }
            }
        }
    }
}

/// Reads one partition from its checkpoint on, handing events to actors and committing
/// the live-run set with the checkpoint.
async fn work_partition(shared: Arc<Shared>, partition: i32, stop: CancellationToken) {
    let waker = Arc::clone(&shared.wakers[&partition]);
    let mut next_offset = loop {
        match load_partition(&shared, partition, &stop).await {
            Ok(next) => break next,
            Err(error) => {
                warn!(partition, %error, "partition not loaded; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    while !stop.is_cancelled() {
        let events = match shared
            .repository
            .store()
            .published(partition, next_offset, READ_BATCH)
            .await
        {
            Ok(events) => events,
            Err(error) => {
                warn!(partition, %error, "partition not read; retrying");
                Vec::new()
            }
        };
        if events.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = waker.notified() => {}
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
            continue;
        }
        let mut live: HashMap<Uuid, Option<String>> = HashMap::new();
        let mut last = next_offset;
        for (offset, stored) in events {
            if stop.is_cancelled() {
                return; // the partition is someone else's now; it reads on from the checkpoint
            }
            last = offset;
            let envelope = match stored {
                Ok(stored) => stored.envelope,
                Err(error) => {
                    // Not decodable by this build (a newer event type during a rolling
                    // upgrade): its run cannot be driven here, the others can.
                    warn!(partition, offset, %error, "event not decodable; skipped by the executor");
                    continue;
                }
            };
            match &envelope.event {
                WorkflowEvent::Submitted(_) | WorkflowEvent::StepRetried(_) => {
                    live.insert(
                        envelope.metadata.stream_id,
                        Some(envelope.metadata.tenant.clone()),
                    );
                }
                WorkflowEvent::Succeeded(_)
                | WorkflowEvent::Failed(_)
                | WorkflowEvent::Cancelled(_) => {
                    live.insert(envelope.metadata.stream_id, None);
                }
                _ => {}
            }
            shared.route(envelope, partition, &stop);
        }
        loop {
            match commit(&shared.pool, partition, last + 1, &live).await {
                Ok(()) => break,
                Err(error) => {
                    warn!(partition, %error, "executor checkpoint not saved; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        next_offset = last + 1;
    }
}

async fn load_partition(
    shared: &Arc<Shared>,
    partition: i32,
    stop: &CancellationToken,
) -> sqlx::Result<i64> {
    let next: Option<i64> =
        sqlx::query_scalar("SELECT next_offset FROM executor_checkpoints WHERE partition = $1")
            .bind(partition)
            .fetch_optional(&shared.pool)
            .await?;
    let live: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT stream_id, tenant FROM executor_runs WHERE log_partition = $1")
            .bind(partition)
            .fetch_all(&shared.pool)
            .await?;
    info!(
        partition,
        live = live.len(),
        from = next.unwrap_or(0),
        "taking over partition"
    );
    shared.adopt(live, partition, stop);
    Ok(next.unwrap_or(0))
}

async fn commit(
    pool: &PgPool,
    partition: i32,
    next_offset: i64,
    live: &HashMap<Uuid, Option<String>>,
) -> sqlx::Result<()> {
    let (started, ended): (Vec<_>, Vec<_>) = live.iter().partition(|(_, tenant)| tenant.is_some());
    let mut transaction = pool.begin().await?;
    if !started.is_empty() {
        sqlx::query(
            "INSERT INTO executor_runs (stream_id, tenant, log_partition) \
             SELECT id, tenant, $3 FROM unnest($1::uuid[], $2::text[]) AS r(id, tenant) \
             ON CONFLICT (stream_id) DO NOTHING",
        )
        .bind(started.iter().map(|(id, _)| **id).collect::<Vec<_>>())
        .bind(
            started
                .iter()
                .map(|(_, t)| t.as_deref().unwrap_or_default().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(partition)
        .execute(&mut *transaction)
        .await?;
    }
    if !ended.is_empty() {
        sqlx::query("DELETE FROM executor_runs WHERE stream_id = ANY($1)")
            .bind(ended.iter().map(|(id, _)| **id).collect::<Vec<_>>())
            .execute(&mut *transaction)
            .await?;
    }
    sqlx::query(
        "INSERT INTO executor_checkpoints (partition, next_offset) VALUES ($1, $2) \
         ON CONFLICT (partition) DO UPDATE SET next_offset = GREATEST(executor_checkpoints.next_offset, excluded.next_offset), \
         updated_at = now()",
    )
    .bind(partition)
    .bind(next_offset)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await
}
