//! The read model's change feed: what the `workflow_read_model` projection announces with
//! PostgreSQL `NOTIFY` when a batch commits, and what readers (GraphQL subscriptions, cache
//! invalidation) listen to. Producer and consumers share this one definition.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `LISTEN`/`NOTIFY` channel of the feed.
pub const CHANNEL: &str = "workflow_changes";

/// The channel a rebuild announces its swap on (the payload is the projection's name): the
/// tables readers read were replaced as a whole, so anything read or cached before may
/// differ from them now.
pub const TABLES_REPLACED_CHANNEL: &str = "workflow_tables_replaced";

/// One workflow whose projected version advanced in a committed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowChange {
    /// The workflow's tenant.
    pub tenant: String,
    /// The workflow (stream) id.
    pub workflow_id: Uuid,
    /// Its projected version after the batch.
    pub version: i64,
    /// Log partition of the workflow's last event in the batch.
    pub log_partition: i32,
    /// Log offset of that event.
    pub log_offset: i64,
}
