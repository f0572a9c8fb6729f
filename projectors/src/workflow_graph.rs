//! The `workflow_graph` projection: runs, steps, tools, models and principals as a graph
//! (PostgreSQL by default, Dgraph when configured). Its writes are idempotent upserts
//! guarded by stream version, so its checkpoint is committed after them.

use flowline_domain::EventEnvelope;
use flowline_graph::{AnyGraph, GraphChange, GraphStore};
use sqlx::{Postgres, Transaction};

use crate::projection::{ApplyError, LogPlace, Projection};

/// Name of the projection.
pub const NAME: &str = "workflow_graph.v1";

/// The projection over a graph store.
#[derive(Debug, Clone)]
pub struct WorkflowGraph {
    store: AnyGraph,
}

impl WorkflowGraph {
    /// Projects into `store`.
    pub fn new(store: AnyGraph) -> Self {
        Self { store }
    }
}

impl Projection for WorkflowGraph {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply_all(
        &self,
        _transaction: &mut Transaction<'_, Postgres>,
        events: &[(EventEnvelope, LogPlace)],
    ) -> Result<(), ApplyError> {
        let changes: Vec<GraphChange> = events
            .iter()
            .map(|(envelope, _)| GraphChange::of(envelope))
            .collect();
        self.store
            .apply_all(&changes)
            .await
            .map_err(|error| match error {
                flowline_graph::Error::Postgres(error) => ApplyError::Database(error),
                other => ApplyError::External(other.to_string()),
            })
    }
}
