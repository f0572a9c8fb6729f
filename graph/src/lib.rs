//! Graph views of the workflow log behind one small port, [`GraphStore`]:
//!
//! run —has_step→ step —depends_on→ step; step —calls_tool→ tool; step —uses_model→ model;
//! run —submitted_by→ principal. Run and step nodes carry their current status, as the
//! `Workflow` aggregate's `apply` defines it (a failed or cancelled run cancels its
//! unfinished steps, a retried step reopens the run…).
//!
//! so one can ask which runs used a tool or a model, the transitive dependencies (and
//! dependents) of a step, and the lineage of a step's output. [`PostgresGraph`] (node and
//! edge tables, recursive queries with depth bounds and cycle safety) is the default;
//! [`DgraphGraph`] speaks DQL over Dgraph's HTTP API. Every write is an idempotent upsert
//! keyed by an external id (`xid`) and guarded by the run's stream version, so a projection
//! can replay events freely and checkpoint after writing.

mod change;
mod dgraph;
mod postgres;

pub use change::{GraphChange, RunChange, StepNode, model_of, tool_of, xid};
pub use dgraph::DgraphGraph;

/// The Dgraph adapter's schema and request bodies, public for golden tests.
pub mod dgraph_bodies {
    pub use crate::dgraph::{SCHEMA, mutation, runs_query, usage_query, walk_query};
}
pub use postgres::PostgresGraph;

/// Why a graph operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL failed.
    #[error("postgres graph: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The Dgraph HTTP API could not be reached or answered with an HTTP error.
    #[error("dgraph: {0}")]
    Http(#[from] reqwest::Error),
    /// Dgraph answered with errors.
    #[error("dgraph: {0}")]
    Dgraph(String),
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A run found by a graph query.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct RunRef {
    /// The run (workflow) id.
    pub run: uuid::Uuid,
    /// Its name.
    pub name: String,
}

/// Which runs of a `runs_using_*` question: ordered by id (UUIDv7 ids, so by submission),
/// strictly after the cursor `after` in that order, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunPage {
    /// The last run of the previous page.
    pub after: Option<uuid::Uuid>,
    /// Most runs in the page.
    pub limit: u32,
    /// Newest first (descending ids) rather than oldest first.
    pub newest_first: bool,
}

impl RunPage {
    /// The first `limit` runs, oldest first.
    pub fn first(limit: u32) -> Self {
        Self {
            after: None,
            limit,
            newest_first: false,
        }
    }
}

/// A step reached from another, with the number of hops.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct StepRef {
    /// Hops from the starting step (1 = direct).
    pub depth: u32,
    /// The step id.
    pub step: String,
}

/// Where a step's output comes from: every upstream step, and the tools, models and
/// principal involved.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lineage {
    /// Upstream steps, nearest first.
    pub steps: Vec<StepRef>,
    /// Tools called by the step or its upstream steps, sorted.
    pub tools: Vec<String>,
    /// Models used by the step or its upstream steps, sorted.
    pub models: Vec<String>,
    /// Who submitted the run.
    pub submitted_by: Option<String>,
}

/// Which way to walk `depends_on` edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Towards the steps a step depends on.
    Upstream,
    /// Towards the steps depending on it.
    Downstream,
}

/// What some steps of a run use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tools called, sorted and distinct.
    pub tools: Vec<String>,
    /// Models used, sorted and distinct.
    pub models: Vec<String>,
    /// Who submitted the run.
    pub submitted_by: Option<String>,
}

/// The port: what a graph view must do.
pub trait GraphStore: Send + Sync + 'static {
    /// Creates what the store needs (idempotent, safe at every start).
    fn ensure_schema(&self) -> impl Future<Output = Result<()>> + Send;
    /// Applies one change idempotently; a change older than what the run has is ignored.
    fn apply(&self, change: &GraphChange) -> impl Future<Output = Result<()>> + Send;
    /// Applies changes in order, idempotently (stores may batch them).
    fn apply_all(&self, changes: &[GraphChange]) -> impl Future<Output = Result<()>> + Send {
        async move {
            for change in changes {
                self.apply(change).await?;
            }
            Ok(())
        }
    }
    /// A page of the runs of `tenant` with a step calling `tool`, in `page` order.
    fn runs_using_tool(
        &self,
        tenant: &str,
        tool: &str,
        page: RunPage,
    ) -> impl Future<Output = Result<Vec<RunRef>>> + Send;
    /// A page of the runs of `tenant` with a step using `model`, in `page` order.
    fn runs_using_model(
        &self,
        tenant: &str,
        model: &str,
        page: RunPage,
    ) -> impl Future<Output = Result<Vec<RunRef>>> + Send;
    /// Steps reachable from `step` along `depends_on` (upstream) or against it
    /// (downstream), up to `depth` hops, each at its shortest distance, nearest first;
    /// never `step` itself (cycle-safe).
    fn walk(
        &self,
        run: uuid::Uuid,
        step: &str,
        depth: u32,
        direction: Direction,
    ) -> impl Future<Output = Result<Vec<StepRef>>> + Send;
    /// The tools and models `steps` of `run` use, and who submitted the run.
    fn usage(
        &self,
        run: uuid::Uuid,
        steps: &[String],
    ) -> impl Future<Output = Result<Usage>> + Send;

    /// Steps `step` depends on, transitively, up to `depth` hops, nearest first.
    fn dependencies(
        &self,
        run: uuid::Uuid,
        step: &str,
        depth: u32,
    ) -> impl Future<Output = Result<Vec<StepRef>>> + Send {
        self.walk(run, step, depth, Direction::Upstream)
    }
    /// Steps depending on `step`, transitively, up to `depth` hops, nearest first.
    fn dependents(
        &self,
        run: uuid::Uuid,
        step: &str,
        depth: u32,
    ) -> impl Future<Output = Result<Vec<StepRef>>> + Send {
        self.walk(run, step, depth, Direction::Downstream)
    }
    /// The lineage of `step`'s output, up to `depth` hops upstream.
    fn lineage(
        &self,
        run: uuid::Uuid,
        step: &str,
        depth: u32,
    ) -> impl Future<Output = Result<Lineage>> + Send {
        async move {
            let steps = self.dependencies(run, step, depth).await?;
            let mut involved: Vec<String> = steps.iter().map(|s| s.step.clone()).collect();
            involved.push(step.to_owned());
            let usage = self.usage(run, &involved).await?;
            Ok(Lineage {
                steps,
                tools: usage.tools,
                models: usage.models,
                submitted_by: usage.submitted_by,
            })
        }
    }
}

/// The store chosen by configuration.
#[derive(Debug, Clone)]
pub enum AnyGraph {
    /// The default.
    Postgres(PostgresGraph),
    /// Dgraph over HTTP.
    Dgraph(DgraphGraph),
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyGraph::Postgres($store) => $call,
            AnyGraph::Dgraph($store) => $call,
        }
    };
}

impl GraphStore for AnyGraph {
    async fn ensure_schema(&self) -> Result<()> {
        delegate!(self, store => store.ensure_schema().await)
    }
    async fn apply(&self, change: &GraphChange) -> Result<()> {
        delegate!(self, store => store.apply(change).await)
    }
    async fn apply_all(&self, changes: &[GraphChange]) -> Result<()> {
        delegate!(self, store => store.apply_all(changes).await)
    }
    async fn runs_using_tool(
        &self,
        tenant: &str,
        tool: &str,
        page: RunPage,
    ) -> Result<Vec<RunRef>> {
        delegate!(self, store => store.runs_using_tool(tenant, tool, page).await)
    }
    async fn runs_using_model(
        &self,
        tenant: &str,
        model: &str,
        page: RunPage,
    ) -> Result<Vec<RunRef>> {
        delegate!(self, store => store.runs_using_model(tenant, model, page).await)
    }
    async fn walk(
        &self,
        run: uuid::Uuid,
        step: &str,
        depth: u32,
        direction: Direction,
    ) -> Result<Vec<StepRef>> {
        delegate!(self, store => store.walk(run, step, depth, direction).await)
    }
    async fn usage(&self, run: uuid::Uuid, steps: &[String]) -> Result<Usage> {
        delegate!(self, store => store.usage(run, steps).await)
    }
}

/// Where the graph view lives, shared by every binary's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct GraphSettings {
    /// Dgraph alpha HTTP address (e.g. `http://127.0.0.1:8080`); when unset the graph view
    /// is kept in PostgreSQL.
    #[arg(long = "dgraph-url", env = "DGRAPH_URL")]
    pub dgraph_url: Option<String>,
}

impl GraphSettings {
    /// The configured store over `pool`.
    pub fn store(&self, pool: sqlx::PgPool) -> AnyGraph {
        match &self.dgraph_url {
            Some(url) => AnyGraph::Dgraph(DgraphGraph::new(url)),
            None => AnyGraph::Postgres(PostgresGraph::new(pool)),
        }
    }
}
