//! Loading a `Workflow` the fast way: its latest snapshot plus the events after it, and
//! "as of" a version or a time from the nearest snapshot at or below it plus replay.
//!
//! A stream keeps its newest [`SNAPSHOTS_KEPT`] snapshots. A snapshot holds what deciding
//! and scheduling need: signal payloads only where a `wait` step may still take them
//! (`Workflow::for_snapshot`); a read that shows every payload fetches the others from
//! their events ([`WorkflowRepository::restore_signal_payloads`]). See
//! `docs/adr/0018-parked-events-and-snapshot-history.md`.

use chrono::{DateTime, Utc};
use flowline_domain::{Versioned, Workflow, WorkflowEvent};
use sqlx::PgPool;
use tracing::warn;
use uuid::Uuid;

use crate::Result;
use crate::store::EventStore;

/// Shape of the serialized `Workflow` state. Bump it when the state's serde form changes:
/// snapshots of other shapes are then ignored and rebuilt from events.
/// `4`: attempts carry what their model calls used and cost.
pub const WORKFLOW_SNAPSHOT_SHAPE: i32 = 4;

/// Snapshots kept per stream (the newest ones, one every `snapshot_every` versions): "as
/// of" a version in their span replays at most `snapshot_every - 1` events.
pub const SNAPSHOTS_KEPT: u64 = 4;

/// Which past state to rebuild.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AsOf {
    /// After the event with this stream version.
    Version(u64),
    /// After the last event that happened at or before this time.
    Time(DateTime<Utc>),
}

/// A past state and what it reflects.
#[derive(Debug, Clone)]
pub struct PastState {
    /// The state with its version (0 = the stream did not exist yet).
    pub workflow: Versioned<Workflow>,
    /// The stream's current version.
    pub current_version: u64,
    /// The version of the snapshot the state was rebuilt from (0: from the first event).
    pub snapshot_version: u64,
    /// How many events were replayed on top of it.
    pub replayed: u64,
}

/// Workflow loading on top of the event store, with snapshots.
#[derive(Debug, Clone)]
pub struct WorkflowRepository {
    store: EventStore,
    pool: PgPool,
    snapshot_every: u64,
}

impl WorkflowRepository {
    /// A repository taking a snapshot every `snapshot_every` versions (0 = never).
    pub fn new(store: EventStore, pool: PgPool, snapshot_every: u64) -> Self {
        Self {
            store,
            pool,
            snapshot_every,
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    async fn snapshot(
        &self,
        tenant: &str,
        stream_id: Uuid,
        at_most: Option<u64>,
    ) -> Result<Versioned<Workflow>> {
        let row: Option<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT version, state FROM snapshots \
             WHERE stream_id = $1 AND tenant = $2 AND shape_version = $3 \
             AND ($4::bigint IS NULL OR version <= $4) ORDER BY version DESC LIMIT 1",
        )
        .bind(stream_id)
        .bind(tenant)
        .bind(WORKFLOW_SNAPSHOT_SHAPE)
        .bind(at_most.map(|v| v as i64))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some((version, state)) => match serde_json::from_value(state) {
                Ok(state) => Versioned {
                    state,
                    version: version as u64,
                },
                Err(error) => {
                    warn!(%stream_id, %error, "unreadable snapshot ignored");
                    Versioned::default()
                }
            },
            None => Versioned::default(),
        })
    }

    /// The current state: latest snapshot plus the events after it.
    pub async fn load(&self, tenant: &str, stream_id: Uuid) -> Result<Versioned<Workflow>> {
        let mut workflow = self.snapshot(tenant, stream_id, None).await?;
        for stored in self
            .store
            .load_range(tenant, stream_id, workflow.version, None)
            .await?
        {
            workflow.apply(&stored.envelope.event);
        }
        Ok(workflow)
    }

    /// Takes a snapshot when `version` is a multiple of the interval, and drops the
    /// stream's snapshots older than the newest [`SNAPSHOTS_KEPT`]. Best effort: a missing
    /// snapshot only makes loads slower.
    pub async fn after_append(
        &self,
        tenant: &str,
        stream_id: Uuid,
        workflow: &Versioned<Workflow>,
    ) {
        if self.snapshot_every == 0 || !workflow.version.is_multiple_of(self.snapshot_every) {
            return;
        }
        let Ok(state) = serde_json::to_value(workflow.state.for_snapshot()) else {
            return;
        };
        let oldest_kept = workflow
            .version
            .saturating_sub(self.snapshot_every * (SNAPSHOTS_KEPT - 1));
        let saved = sqlx::query(
            "WITH saved AS ( \
               INSERT INTO snapshots (stream_id, tenant, version, shape_version, state) \
               VALUES ($1, $2, $3, $4, $5) \
               ON CONFLICT (stream_id, version) DO UPDATE SET \
                 shape_version = excluded.shape_version, state = excluded.state, taken_at = now() \
               WHERE snapshots.shape_version <> excluded.shape_version) \
             DELETE FROM snapshots WHERE stream_id = $1 AND version < $6",
        )
        .bind(stream_id)
        .bind(tenant)
        .bind(workflow.version as i64)
        .bind(WORKFLOW_SNAPSHOT_SHAPE)
        .bind(state)
        .bind(oldest_kept as i64)
        .execute(&self.pool)
        .await;
        if let Err(error) = saved {
            warn!(%stream_id, %error, "snapshot not saved");
        }
    }

    /// Puts back the signal payloads `workflow` does not hold (a snapshot left them out),
    /// read from their events: for a read that shows every signal.
    pub async fn restore_signal_payloads(
        &self,
        tenant: &str,
        stream_id: Uuid,
        workflow: &mut Workflow,
    ) -> Result<()> {
        let versions = workflow.signals_without_payload();
        if versions.is_empty() {
            return Ok(());
        }
        for stored in self
            .store
            .load_versions(tenant, stream_id, &versions)
            .await?
        {
            if let WorkflowEvent::SignalReceived(signal) = stored.envelope.event {
                workflow.restore_signal_payload(
                    stored.envelope.metadata.stream_version,
                    signal.payload,
                );
            }
        }
        Ok(())
    }

    /// The state as it was at `as_of`, rebuilt from a snapshot no later than it plus replay.
    pub async fn load_as_of(
        &self,
        tenant: &str,
        stream_id: Uuid,
        as_of: AsOf,
    ) -> Result<PastState> {
        let (current_version, target) = self.store.versions(tenant, stream_id, as_of).await?;
        let target = target.min(current_version);
        let mut workflow = self.snapshot(tenant, stream_id, Some(target)).await?;
        let snapshot_version = workflow.version;
        if target > workflow.version {
            for stored in self
                .store
                .load_range(tenant, stream_id, workflow.version, Some(target))
                .await?
            {
                workflow.apply(&stored.envelope.event);
            }
        }
        Ok(PastState {
            replayed: workflow.version - snapshot_version,
            workflow,
            current_version,
            snapshot_version,
        })
    }
}
