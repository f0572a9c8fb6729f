//! Batching data loaders: every nested field that would otherwise query once per parent
//! asks its loader for its key, and the loader answers all keys collected in the same
//! tick with one statement (read model) or one call per distinct key (graph port, which
//! has no multi-key operations). Keys carry the tenant wherever the store is shared by
//! tenants; the loaders are shared by all requests and cache nothing, so concurrent
//! requests batch together and no answer outlives its request.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use flowline_graph::{AnyGraph, Direction, GraphStore, RunPage, RunRef, StepRef};
use futures::future::try_join_all;
use uuid::Uuid;

use crate::Error;
use crate::read_model::{AttemptsByStep, EventView, ReadModel, WorkflowView};

/// A tenant and a workflow id.
pub type WorkflowKey = (String, Uuid);

/// Loader errors are shared by every key of the failed batch.
pub type SharedError = Arc<Error>;

fn by_tenant(keys: &[WorkflowKey]) -> HashMap<&str, Vec<Uuid>> {
    let mut grouped: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (tenant, id) in keys {
        grouped.entry(tenant.as_str()).or_default().push(*id);
    }
    grouped
}

/// Asks the graph port once per key, all keys at once, and keys each answer by its question.
async fn one_graph_call_per_key<'k, K, V, F, Fut>(
    keys: &'k [K],
    ask: F,
) -> Result<HashMap<K, Arc<[V]>>, SharedError>
where
    K: Clone + Eq + std::hash::Hash,
    F: Fn(&'k K) -> Fut,
    Fut: Future<Output = flowline_graph::Result<Vec<V>>>,
{
    let answers = try_join_all(keys.iter().map(ask))
        .await
        .map_err(|e| Arc::new(Error::from(e)))?;
    Ok(keys
        .iter()
        .cloned()
        .zip(answers.into_iter().map(Arc::from))
        .collect())
}

/// Workflows with their steps: one statement for the workflows and one for their steps.
pub struct WorkflowLoader(pub ReadModel);

impl Loader<WorkflowKey> for WorkflowLoader {
    type Value = Arc<WorkflowView>;
    type Error = SharedError;

    async fn load(
        &self,
        keys: &[WorkflowKey],
    ) -> Result<HashMap<WorkflowKey, Arc<WorkflowView>>, SharedError> {
        let mut found = HashMap::new();
        for (tenant, ids) in by_tenant(keys) {
            for view in self.0.workflows(tenant, &ids).await.map_err(Arc::new)? {
                found.insert((tenant.to_owned(), view.id), Arc::new(view));
            }
        }
        Ok(found)
    }
}

/// A page of a workflow's events: tenant, workflow, after this version, at most this many.
pub type EventsKey = (String, Uuid, i64, i64);

/// Pages of events of workflows: one statement per distinct page (after, first), reading
/// only the pages' rows.
pub struct EventsLoader(pub ReadModel);

impl Loader<EventsKey> for EventsLoader {
    type Value = Arc<[EventView]>;
    type Error = SharedError;

    async fn load(
        &self,
        keys: &[EventsKey],
    ) -> Result<HashMap<EventsKey, Arc<[EventView]>>, SharedError> {
        let mut pages: HashMap<(&str, i64, i64), Vec<Uuid>> = HashMap::new();
        for (tenant, id, after, first) in keys {
            pages
                .entry((tenant.as_str(), *after, *first))
                .or_default()
                .push(*id);
        }
        let mut found = HashMap::new();
        for ((tenant, after, first), ids) in pages {
            let mut events = self
                .0
                .event_pages(tenant, &ids, after, first)
                .await
                .map_err(Arc::new)?;
            for id in ids {
                let of_one = events.remove(&id).unwrap_or_default();
                found.insert((tenant.to_owned(), id, after, first), of_one.into());
            }
        }
        Ok(found)
    }
}

/// Attempts of workflows' steps: one statement.
pub struct AttemptsLoader(pub ReadModel);

impl Loader<WorkflowKey> for AttemptsLoader {
    type Value = Arc<AttemptsByStep>;
    type Error = SharedError;

    async fn load(
        &self,
        keys: &[WorkflowKey],
    ) -> Result<HashMap<WorkflowKey, Arc<AttemptsByStep>>, SharedError> {
        let mut found = HashMap::new();
        for (tenant, ids) in by_tenant(keys) {
            let mut attempts = self.0.attempts_of(tenant, &ids).await.map_err(Arc::new)?;
            for id in ids {
                let of_one = attempts.remove(&id).unwrap_or_default();
                found.insert((tenant.to_owned(), id), Arc::new(of_one));
            }
        }
        Ok(found)
    }
}

/// What a run uses: a tool or a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Used {
    /// A tool (`server/tool`).
    Tool,
    /// A model.
    Model,
}

/// Runs using a tool or a model: tenant, tool or model, and how many of the newest.
pub type UsageKey = (String, Used, String, u32);

/// Runs using a tool or a model, newest first: one graph call per distinct (tenant, tool
/// or model, page size), so a page of runs sharing their tools costs one call per tool,
/// not per run.
pub struct UsageRunsLoader(pub AnyGraph);

impl Loader<UsageKey> for UsageRunsLoader {
    type Value = Arc<[RunRef]>;
    type Error = SharedError;

    async fn load(
        &self,
        keys: &[UsageKey],
    ) -> Result<HashMap<UsageKey, Arc<[RunRef]>>, SharedError> {
        one_graph_call_per_key(keys, |(tenant, used, name, limit)| async move {
            let page = RunPage {
                after: None,
                limit: *limit,
                newest_first: true,
            };
            match used {
                Used::Tool => self.0.runs_using_tool(tenant, name, page).await,
                Used::Model => self.0.runs_using_model(tenant, name, page).await,
            }
        })
        .await
    }
}

/// A walk: run, start step, depth, upstream (else downstream).
pub type WalkKey = (Uuid, String, u32, bool);

/// Transitive dependencies or dependents: one graph call per distinct walk (the same
/// walk asked for by several fields of a request is made once).
pub struct WalkLoader(pub AnyGraph);

impl Loader<WalkKey> for WalkLoader {
    type Value = Arc<[StepRef]>;
    type Error = SharedError;

    async fn load(
        &self,
        keys: &[WalkKey],
    ) -> Result<HashMap<WalkKey, Arc<[StepRef]>>, SharedError> {
        one_graph_call_per_key(keys, |(run, step, depth, upstream)| {
            let direction = if *upstream {
                Direction::Upstream
            } else {
                Direction::Downstream
            };
            self.0.walk(*run, step, *depth, direction)
        })
        .await
    }
}
