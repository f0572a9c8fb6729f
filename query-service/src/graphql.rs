//! The GraphQL schema: workflows (a Relay connection with filters and sort), one workflow
//! now or as it was at a time (rebuilt from the event store), status counts, graph
//! questions on steps and runs, and the Apollo Federation v2 entity `Workflow`.
//!
//! Nested lists are resolved through batching data loaders ([`loaders`]), so a page costs
//! a fixed number of SQL statements whatever its size.

mod loaders;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::{
    ExecutableDocument, FragmentDefinition, Selection, SelectionSet,
};
use async_graphql::{
    Context, EmptyMutation, Enum, ErrorExtensions, InputObject, Name, Object, Pos, Positioned,
    Request, Schema, ServerError, ServerResult, SimpleObject, ValidationResult, Variables,
};
use chrono::{DateTime, Utc};
use flowline_event_log::ConsistencyToken;
use flowline_event_store::{AsOf, WorkflowRepository};
use flowline_graph::{AnyGraph, RunRef, model_of, tool_of};
use uuid::Uuid;

use crate::Error;
use crate::cache::WorkflowReads;
use crate::changes::ChangeFeed;
use crate::config::GraphqlLimits;
use crate::consistency::token_from_argument;
use crate::graph_rest::MAX_DEPTH;
use crate::read_model::{
    AttemptView, AttemptsByStep, EventView, FailureView, ListFilter, ReadModel, Sort, SortField,
    StepErrorView, StepView, UsageView, WorkflowView,
};
use crate::step_output::LiveChannel;
use crate::subscriptions::SubscriptionRoot;
use crate::usage::{Dimension as UsageDimension, UsageQuery, UsageReport};
use loaders::{
    AttemptsLoader, EventsKey, EventsLoader, UsageRunsLoader, Used, WalkLoader, WorkflowKey,
    WorkflowLoader,
};

/// What `asOf` adds to a query's complexity: the replay it causes, up to the events
/// between two snapshots (`SNAPSHOT_EVERY`, 100 by default), each read, decoded and
/// applied (costed 25 values), plus the snapshot and the times looked up.
const AS_OF_REPLAY_COST: usize = 2_500;
/// The number of items a step list (`steps`, `dependencies`, `dependents`) is assumed
/// to have before the query runs; the answer budget charges their real length.
const ASSUMED_STEPS: usize = 10;
/// Default and largest page of a workflow's `events`.
const DEFAULT_EVENTS_PAGE: i32 = 50;
const MAX_EVENTS_PAGE: i32 = 1_000;

/// The tenant of the request, put into the GraphQL context by the HTTP handler.
pub struct Tenant(pub String);

/// The schema type.
pub type QuerySchema = Schema<QueryRoot, EmptyMutation, SubscriptionRoot>;

/// Builds the schema: its roots, the data its resolvers read, its data loaders and limits;
/// subscriptions follow `changes`.
pub fn schema(
    read_model: ReadModel,
    repository: WorkflowRepository,
    graph: AnyGraph,
    limits: GraphqlLimits,
    changes: ChangeFeed,
    reads: WorkflowReads,
    live: LiveChannel,
) -> QuerySchema {
    Schema::build(QueryRoot, EmptyMutation, SubscriptionRoot)
        .enable_federation()
        .extension(QueryLimits(limits))
        .data(DataLoader::new(
            WorkflowLoader(read_model.clone()),
            tokio::spawn,
        ))
        .data(DataLoader::new(
            EventsLoader(read_model.clone()),
            tokio::spawn,
        ))
        .data(DataLoader::new(
            AttemptsLoader(read_model.clone()),
            tokio::spawn,
        ))
        .data(DataLoader::new(
            UsageRunsLoader(graph.clone()),
            tokio::spawn,
        ))
        .data(DataLoader::new(WalkLoader(graph), tokio::spawn))
        .data(read_model)
        .data(repository)
        .data(changes)
        .data(live)
        .data(reads)
        .finish()
}

impl ErrorExtensions for Error {
    fn extend(&self) -> async_graphql::Error {
        let problem = self.to_problem();
        async_graphql::Error::new(problem.detail.clone()).extend_with(|_, extensions| {
            extensions.set(
                "code",
                problem.kind.trim_start_matches("/problems/").to_owned(),
            );
            extensions.set("status", problem.status);
            for (key, value) in &problem.extensions {
                if let Ok(value) = async_graphql::Value::from_json(value.clone()) {
                    extensions.set(key, value);
                }
            }
        })
    }
}

fn graphql_error(error: impl std::borrow::Borrow<Error>) -> async_graphql::Error {
    error.borrow().extend()
}

/// Bounds every operation before it runs: refuses documents with too many fields or
/// aliases when they are parsed, and queries deeper or more complex than configured when
/// they are validated, with an error naming the measured value, the limit and the
/// setting.
struct QueryLimits(GraphqlLimits);

impl ExtensionFactory for QueryLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(QueryLimitsCheck { limits: self.0 })
    }
}

struct QueryLimitsCheck {
    limits: GraphqlLimits,
}

fn refusal(error: Error) -> ServerError {
    error.extend().into_server_error(Pos { line: 1, column: 1 })
}

/// A query or mutation over HTTP with what bounds it while it runs: its answer budget,
/// and its own memoizing walk loader (the same walk asked for anywhere in the request is
/// made once). Subscriptions live long and get neither: each of their events is bounded
/// by the static limits, and their walks must see the graph as it changes.
pub(crate) fn bounded(request: Request, limits: &GraphqlLimits, graph: &AnyGraph) -> Request {
    let walks = DataLoader::with_cache(
        WalkLoader(graph.clone()),
        tokio::spawn,
        HashMapCache::default(),
    );
    request
        .data(AnswerBudget::new(limits.max_answer_values))
        .data(walks)
}

#[async_graphql::async_trait::async_trait]
impl Extension for QueryLimitsCheck {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let counts = SelectionCounts::of(&document, &self.limits);
        if counts.fields > self.limits.max_fields {
            return Err(refusal(Error::QueryTooLarge {
                what: "fields",
                count: counts.fields,
                limit: self.limits.max_fields,
                setting: "GRAPHQL_MAX_FIELDS",
            }));
        }
        if counts.aliases > self.limits.max_aliases {
            return Err(refusal(Error::QueryTooLarge {
                what: "aliases",
                count: counts.aliases,
                limit: self.limits.max_aliases,
                setting: "GRAPHQL_MAX_ALIASES",
            }));
        }
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        let refused = if result.depth > self.limits.max_depth {
            Some(Error::QueryTooDeep {
                depth: result.depth,
                limit: self.limits.max_depth,
            })
        } else if result.complexity > self.limits.max_complexity {
            Some(Error::QueryTooComplex {
                complexity: result.complexity,
                limit: self.limits.max_complexity,
            })
        } else {
            None
        };
        match refused {
            Some(error) => Err(vec![refusal(error)]),
            None => Ok(result),
        }
    }
}

/// The fields and aliases of a document's largest operation, fragments counted at each
/// spread. Counting stops once past a limit, and after a bounded number of visited
/// selections, so a fragment bomb (or a cycle, which validation refuses later) costs
/// little.
#[derive(Default)]
struct SelectionCounts {
    fields: usize,
    aliases: usize,
    visited: usize,
}

impl SelectionCounts {
    fn of(document: &ExecutableDocument, limits: &GraphqlLimits) -> Self {
        let mut largest = Self::default();
        for (_, operation) in document.operations.iter() {
            let mut counts = Self::default();
            counts.add(
                &operation.node.selection_set.node,
                &document.fragments,
                limits,
            );
            if (counts.fields, counts.aliases) > (largest.fields, largest.aliases) {
                largest = counts;
            }
        }
        largest
    }

    fn add(
        &mut self,
        set: &SelectionSet,
        fragments: &HashMap<Name, Positioned<FragmentDefinition>>,
        limits: &GraphqlLimits,
    ) {
        for item in &set.items {
            self.visited += 1;
            if self.fields > limits.max_fields
                || self.aliases > limits.max_aliases
                || self.visited > 16 * limits.max_fields.max(1)
            {
                return;
            }
            match &item.node {
                Selection::Field(field) => {
                    self.fields += 1;
                    self.aliases += usize::from(field.node.alias.is_some());
                    self.add(&field.node.selection_set.node, fragments, limits);
                }
                Selection::FragmentSpread(spread) => {
                    if let Some(fragment) = fragments.get(&spread.node.fragment_name.node) {
                        self.add(&fragment.node.selection_set.node, fragments, limits);
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.add(&inline.node.selection_set.node, fragments, limits);
                }
            }
        }
    }
}

/// How many more values a request's answer may hold: every list charges its real length
/// times the fields selected on its items before its items are resolved, so an answer
/// that would outgrow the budget stops growing at it.
pub(crate) struct AnswerBudget {
    left: AtomicUsize,
    limit: usize,
}

impl AnswerBudget {
    fn new(limit: usize) -> Self {
        Self {
            left: AtomicUsize::new(limit),
            limit,
        }
    }

    fn spend(&self, values: usize) -> Result<(), Error> {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(values)
            })
            .map(drop)
            .map_err(|_| {
                // Spent: every later list of the request is refused at once.
                self.left.store(0, Ordering::Relaxed);
                Error::AnswerTooLarge { limit: self.limit }
            })
    }
}

/// Charges a list field of `items` items to the request's answer budget.
fn charge(ctx: &Context<'_>, items: usize) -> async_graphql::Result<()> {
    let Some(budget) = ctx.data_opt::<AnswerBudget>() else {
        return Ok(());
    };
    let per_item = ctx.field().selection_set().count().max(1);
    budget
        .spend(items.saturating_mul(per_item))
        .map_err(graphql_error)
}

/// Filters of `workflows` and `workflowCounts`; every field is optional, they combine
/// with AND.
#[derive(Debug, Default, InputObject)]
pub struct WorkflowFilter {
    /// Only this status: `pending`, `running`, `paused`, `succeeded`, `failed` or
    /// `cancelled`.
    status: Option<String>,
    /// Only runs whose name contains this text (case-insensitive).
    name: Option<String>,
    /// Only runs submitted at or after this time.
    submitted_after: Option<DateTime<Utc>>,
    /// Only runs submitted before this time.
    submitted_before: Option<DateTime<Utc>>,
    /// Only runs with an `mcp_tool` step calling this tool (`server/tool`).
    tool: Option<String>,
    /// Only runs with an `llm` step using this model.
    model: Option<String>,
}

impl WorkflowFilter {
    fn into_list_filter(self) -> ListFilter {
        ListFilter {
            status: self.status,
            name: self.name,
            submitted_after: self.submitted_after,
            submitted_before: self.submitted_before,
            tool: self.tool,
            model: self.model,
            ..ListFilter::default()
        }
    }
}

/// What `workflows` is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum WorkflowSortField {
    /// Submission time.
    SubmittedAt,
    /// Time of the last event.
    UpdatedAt,
    /// Name, then id.
    Name,
}

/// A sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum SortDirection {
    /// Smallest first.
    Asc,
    /// Largest (newest) first.
    Desc,
}

/// Order of `workflows`; default newest submitted first.
#[derive(Debug, Clone, Copy, InputObject)]
pub struct WorkflowSort {
    /// The field.
    field: WorkflowSortField,
    /// The direction.
    #[graphql(default_with = "SortDirection::Desc")]
    direction: SortDirection,
}

impl From<WorkflowSort> for Sort {
    fn from(sort: WorkflowSort) -> Self {
        Sort {
            field: match sort.field {
                WorkflowSortField::SubmittedAt => SortField::SubmittedAt,
                WorkflowSortField::UpdatedAt => SortField::UpdatedAt,
                WorkflowSortField::Name => SortField::Name,
            },
            descending: sort.direction == SortDirection::Desc,
        }
    }
}

/// A page of workflows (a Relay connection).
#[derive(SimpleObject)]
pub struct WorkflowConnection {
    /// The page's workflows with their cursors.
    edges: Vec<WorkflowEdge>,
    /// The page's workflows (the edges' nodes, for clients that need no cursors).
    nodes: Vec<Workflow>,
    /// Pagination state.
    page_info: PageInfo,
}

/// A workflow in a page.
#[derive(SimpleObject)]
pub struct WorkflowEdge {
    /// Pass as `after` to continue after this workflow.
    cursor: String,
    /// The workflow.
    node: Workflow,
}

/// Where a page ends.
#[derive(SimpleObject)]
pub struct PageInfo {
    /// Whether another page follows.
    has_next_page: bool,
    /// Pass as `after` for the next page; null when the page is empty.
    end_cursor: Option<String>,
}

/// How many workflows match, per status.
#[derive(SimpleObject)]
pub struct WorkflowCounts {
    /// All matching workflows.
    total: i64,
    /// Per status, in lifecycle order, zeros included.
    by_status: Vec<StatusCount>,
}

/// The number of workflows with one status.
#[derive(SimpleObject)]
pub struct StatusCount {
    /// The status.
    status: String,
    /// How many.
    count: i64,
}

/// Read queries.
pub struct QueryRoot;

fn tenant<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a str> {
    Ok(ctx.data::<Tenant>()?.0.as_str())
}

/// A `consistencyToken` argument, parsed.
fn token_argument(token: Option<&str>) -> async_graphql::Result<Option<ConsistencyToken>> {
    token
        .map(token_from_argument)
        .transpose()
        .map_err(graphql_error)
}

/// Read-your-writes: with a command's `consistencyToken`, waits until the read model has
/// passed it (the same bound and error as the `X-Consistency-Token` header).
async fn reach(ctx: &Context<'_>, token: Option<&ConsistencyToken>) -> async_graphql::Result<()> {
    ctx.data::<WorkflowReads>()?
        .gate()
        .wait_for_any(token)
        .await
        .map_err(graphql_error)
}

#[Object(name = "Query")]
impl QueryRoot {
    /// One workflow run, or null when it does not exist for this tenant. With `asOf` the
    /// run as it was at that time, rebuilt from the event store (from the newest snapshot
    /// before it): status, version and steps (with their status) as they were then; `asOf`
    /// adds the replay it causes to the query's complexity.
    #[graphql(complexity = "child_complexity + as_of.map_or(0, |_| AS_OF_REPLAY_COST)")]
    async fn workflow(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        as_of: Option<DateTime<Utc>>,
        consistency_token: Option<String>,
    ) -> async_graphql::Result<Option<Workflow>> {
        let tenant = tenant(ctx)?;
        let token = token_argument(consistency_token.as_deref())?;
        match as_of {
            // The hot read: through the Redis cache, never older than the token.
            None => Ok(ctx
                .data::<WorkflowReads>()?
                .workflow(tenant, id, token.as_ref())
                .await
                .map_err(graphql_error)?
                .map(|view| Workflow::current(Arc::new(view)))),
            Some(time) => {
                reach(ctx, token.as_ref()).await?;
                workflow_as_of(ctx, tenant, id, time).await
            }
        }
    }

    /// Workflow runs matching `filter`, in `sort` order (default newest first), `first`
    /// (1 to 100) per page; pass `pageInfo.endCursor` as `after` for the next page.
    #[graphql(complexity = "(first.clamp(1, 100) as usize) * child_complexity")]
    async fn workflows(
        &self,
        ctx: &Context<'_>,
        filter: Option<WorkflowFilter>,
        #[graphql(default = 20)] first: i32,
        after: Option<String>,
        sort: Option<WorkflowSort>,
        consistency_token: Option<String>,
    ) -> async_graphql::Result<WorkflowConnection> {
        let tenant = tenant(ctx)?;
        reach(ctx, token_argument(consistency_token.as_deref())?.as_ref()).await?;
        let sort: Sort = sort.map(Sort::from).unwrap_or_default();
        let filter = ListFilter {
            sort,
            limit: Some(first.into()),
            cursor: after,
            ..filter.unwrap_or_default().into_list_filter()
        };
        let page = ctx
            .data::<ReadModel>()?
            .list(tenant, &filter)
            .await
            .map_err(graphql_error)?;
        charge(ctx, page.items.len())?;
        let views: Vec<Arc<WorkflowView>> = page.items.into_iter().map(Arc::new).collect();
        let page_data = Arc::new(prefetch(ctx, &views).await?);
        let nodes: Vec<Workflow> = views
            .into_iter()
            .map(|view| Workflow {
                page: Some(page_data.clone()),
                ..Workflow::current(view)
            })
            .collect();
        let edges: Vec<WorkflowEdge> = nodes
            .iter()
            .map(|node| WorkflowEdge {
                cursor: ReadModel::cursor_after(&node.view, sort),
                node: node.clone(),
            })
            .collect();
        Ok(WorkflowConnection {
            page_info: PageInfo {
                has_next_page: page.next_cursor.is_some(),
                end_cursor: edges.last().map(|edge| edge.cursor.clone()),
            },
            edges,
            nodes,
        })
    }

    /// How many workflows match `filter`, in total and per status.
    async fn workflow_counts(
        &self,
        ctx: &Context<'_>,
        filter: Option<WorkflowFilter>,
        consistency_token: Option<String>,
    ) -> async_graphql::Result<WorkflowCounts> {
        let tenant = tenant(ctx)?;
        reach(ctx, token_argument(consistency_token.as_deref())?.as_ref()).await?;
        let counts = ctx
            .data::<ReadModel>()?
            .counts(tenant, &filter.unwrap_or_default().into_list_filter())
            .await
            .map_err(graphql_error)?;
        Ok(WorkflowCounts {
            total: counts.by_status.iter().map(|(_, count)| count).sum(),
            by_status: counts
                .by_status
                .into_iter()
                .map(|(status, count)| StatusCount { status, count })
                .collect(),
        })
    }

    /// Tokens and cost of the tenant's model calls, summed by PostgreSQL and exact (costs
    /// as decimal text), grouped by `groupBy` (none: one total), for calls made from `from`
    /// (an RFC 3339 time or a date) until before `to` (a `to` date includes its day); at
    /// most `first` groups (1 to 1000), `truncated` when there are more. From the usage read
    /// model (`usage.v1`), which follows the log beside the run views.
    #[graphql(complexity = "(first.clamp(1, 1000) as usize) * child_complexity")]
    async fn usage(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] group_by: Vec<UsageDimension>,
        from: Option<String>,
        to: Option<String>,
        #[graphql(default = 100)] first: i32,
    ) -> async_graphql::Result<UsageReport> {
        let tenant = tenant(ctx)?;
        let query = UsageQuery::new(
            group_by,
            from.as_deref(),
            to.as_deref(),
            (Some(first.into()), "first"),
        )
        .map_err(graphql_error)?;
        let report = query
            .run(ctx.data::<ReadModel>()?.pool(), tenant)
            .await
            .map_err(graphql_error)?;
        charge(ctx, report.groups.len())?;
        Ok(report)
    }

    /// Federation: resolves `Workflow` representations (`@key(fields: "id")`) of the
    /// request's tenant; null for ids this tenant does not have.
    #[graphql(entity)]
    async fn find_workflow_by_id(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Option<Workflow>> {
        load_workflow(ctx, tenant(ctx)?, id).await
    }
}

/// Loads what the selected nested fields of a page's workflows need, one loader call per
/// kind of data.
async fn prefetch(
    ctx: &Context<'_>,
    views: &[Arc<WorkflowView>],
) -> async_graphql::Result<PageData> {
    let look = ctx.look_ahead();
    let wants = |field: &str| {
        look.field("edges").field("node").field(field).exists()
            || look.field("nodes").field(field).exists()
    };
    let wants_of_steps = |field: &str| {
        look.field("edges")
            .field("node")
            .field("steps")
            .field(field)
            .exists()
            || look.field("nodes").field("steps").field(field).exists()
    };
    let mut data = PageData::default();
    if wants_of_steps("attempts") {
        let keys = views.iter().map(|view| (view.tenant.clone(), view.id));
        data.attempts = ctx
            .data::<DataLoader<AttemptsLoader>>()?
            .load_many(keys)
            .await
            .map_err(graphql_error)?;
    }
    let event_pages: BTreeSet<(i64, i64)> = [
        look.field("edges").field("node").field("events"),
        look.field("nodes").field("events"),
    ]
    .iter()
    .flat_map(|events| events.selection_fields())
    .filter_map(|field| events_page_of(&field.arguments().ok()?).ok())
    .collect();
    for (after, first) in event_pages {
        let keys = views
            .iter()
            .map(|view| (view.tenant.clone(), view.id, after, first));
        data.events.extend(
            ctx.data::<DataLoader<EventsLoader>>()?
                .load_many(keys)
                .await
                .map_err(graphql_error)?,
        );
    }
    let mut used = BTreeSet::new();
    for (field, kind) in [
        ("runsUsingSameTools", Used::Tool),
        ("runsUsingSameModels", Used::Model),
    ] {
        if wants(field) {
            for view in views {
                used.extend(
                    view.steps
                        .iter()
                        .filter_map(|step| used_by(step, kind))
                        .map(|name| (view.tenant.clone(), kind, name, RELATED_RUNS_ASKED)),
                );
            }
        }
    }
    if !used.is_empty() {
        data.runs = ctx
            .data::<DataLoader<UsageRunsLoader>>()?
            .load_many(used)
            .await
            .map_err(graphql_error)?;
    }
    Ok(data)
}

async fn load_workflow(
    ctx: &Context<'_>,
    tenant: &str,
    id: Uuid,
) -> async_graphql::Result<Option<Workflow>> {
    Ok(ctx
        .data::<DataLoader<WorkflowLoader>>()?
        .load_one((tenant.to_owned(), id))
        .await
        .map_err(graphql_error)?
        .map(Workflow::current))
}

async fn workflow_as_of(
    ctx: &Context<'_>,
    tenant: &str,
    id: Uuid,
    time: DateTime<Utc>,
) -> async_graphql::Result<Option<Workflow>> {
    if time > Utc::now() {
        return Err(graphql_error(Error::InvalidParameter {
            parameter: "asOf",
            message: format!("{} is in the future", time.to_rfc3339()),
        }));
    }
    let past = ctx
        .data::<WorkflowRepository>()?
        .load_as_of(tenant, id, AsOf::Time(time))
        .await
        .map_err(|e| graphql_error(Error::Store(Box::new(e))))?;
    if past.current_version == 0 {
        return Ok(None);
    }
    if past.workflow.version == 0 {
        return Err(graphql_error(Error::NotYetExisting(time.to_rfc3339())));
    }
    // The aggregate has no timestamps; they are those of its first and its last event.
    let version = past.workflow.version as i64;
    let times = ctx
        .data::<ReadModel>()?
        .occurred_at(tenant, id, &[1, version])
        .await
        .map_err(graphql_error)?;
    let at = |v: i64| times.get(&v).copied().unwrap_or(time);
    let state = past.workflow.state;
    let usage = state.usage();
    let mut attempts = AttemptsByStep::new();
    let steps = state
        .steps
        .into_iter()
        .map(|step| {
            attempts.insert(
                step.id.clone(),
                step.attempts.iter().map(past_attempt).collect(),
            );
            let usage = step.usage();
            StepView {
                kind: step.kind.as_str().to_owned(),
                status: step.status.as_str().to_owned(),
                depends_on: step.depends_on,
                config: async_graphql::Json(step.config),
                attempt_count: step.attempts.len() as i32,
                started_at: step.attempts.first().map(|a| a.started_at),
                // The aggregate keeps no end times; the read model has them for now.
                finished_at: None,
                error: step.error.map(|e| StepErrorView {
                    kind: e.kind,
                    message: e.message,
                }),
                next_attempt_at: step.next_attempt_at,
                skip_reason: step.skip_reason,
                output: match &step.output_ref {
                    Some(_) => None,
                    None => step.output.map(async_graphql::Json),
                },
                output_ref: step.output_ref,
                usage: usage.as_ref().map(UsageView::from),
                id: step.id,
            }
        })
        .collect();
    let view = WorkflowView {
        id,
        tenant: tenant.to_owned(),
        name: state.name,
        status: state.status.as_str().to_owned(),
        version,
        input: async_graphql::Json(state.input),
        cancel_reason: state.cancel_reason,
        submitted_by: state.submitted_by,
        submitted_at: at(1),
        updated_at: at(version),
        started_at: state.started_at,
        finished_at: None,
        failure: state.failure.map(|failure| FailureView {
            reason: failure.reason,
            step_id: failure.step_id,
        }),
        usage: usage.as_ref().map(UsageView::from),
        steps,
    };
    Ok(Some(Workflow {
        view: Arc::new(view),
        as_of: Some(time),
        page: None,
        past_attempts: Some(Arc::new(attempts)),
    }))
}

/// An attempt as the aggregate has it: no input, end or duration (the events of its end
/// carry those, the aggregate keeps only the outcome).
fn past_attempt(attempt: &flowline_domain::Attempt) -> AttemptView {
    AttemptView {
        attempt: attempt.number as i32,
        attempt_id: attempt.attempt_id,
        status: attempt.outcome.as_str().to_owned(),
        input: None,
        error: attempt.outcome.error().map(|error| StepErrorView {
            kind: error.kind,
            message: error.message,
        }),
        started_at: attempt.started_at,
        finished_at: None,
        duration_ms: None,
        usage: attempt.usage.as_ref().map(UsageView::from),
    }
}

/// A workflow run: from the read model, or as it was at `asOf`.
#[derive(Clone)]
pub struct Workflow {
    view: Arc<WorkflowView>,
    as_of: Option<DateTime<Utc>>,
    page: Option<Arc<PageData>>,
    /// The attempts of a run rebuilt `asOf` a time (the read model's are today's).
    past_attempts: Option<Arc<AttemptsByStep>>,
}

/// What a page's nested fields need, loaded for the whole page at once: a data loader
/// batches only the keys that arrive within its delay, which a large page can outlast, so
/// the connection hands all of its keys to the loaders in one call.
#[derive(Default)]
struct PageData {
    events: HashMap<EventsKey, Arc<[EventView]>>,
    runs: HashMap<loaders::UsageKey, Arc<[RunRef]>>,
    attempts: HashMap<WorkflowKey, Arc<AttemptsByStep>>,
}

impl Workflow {
    /// The run as the read model has it now.
    pub(crate) fn current(view: Arc<WorkflowView>) -> Self {
        Self {
            view,
            as_of: None,
            page: None,
            past_attempts: None,
        }
    }

    fn step(&self, index: usize) -> Step {
        Step {
            workflow: self.clone(),
            index,
        }
    }

    fn used(&self, kind: Used) -> BTreeSet<String> {
        self.view
            .steps
            .iter()
            .filter_map(|step| used_by(step, kind))
            .collect()
    }

    async fn runs_sharing(
        &self,
        ctx: &Context<'_>,
        kind: Used,
        first: i32,
    ) -> async_graphql::Result<Vec<RelatedRun>> {
        let keys = self
            .used(kind)
            .into_iter()
            .map(|name| (self.view.tenant.clone(), kind, name, RELATED_RUNS_ASKED));
        let runs = match &self.page {
            Some(page) => keys
                .filter_map(|key| page.runs.get(&key).map(|runs| (key, runs.clone())))
                .collect(),
            None => ctx
                .data::<DataLoader<UsageRunsLoader>>()?
                .load_many(keys)
                .await
                .map_err(graphql_error)?,
        };
        let mut related: std::collections::BTreeMap<Uuid, RelatedRun> = Default::default();
        for ((_, _, name, _), refs) in runs {
            for run in refs.iter().filter(|run| run.run != self.view.id) {
                related
                    .entry(run.run)
                    .or_insert_with(|| RelatedRun {
                        id: run.run,
                        name: run.name.clone(),
                        shared: Vec::new(),
                    })
                    .shared
                    .push(name.clone());
            }
        }
        let mut related: Vec<RelatedRun> = related.into_values().collect();
        for run in &mut related {
            run.shared.sort();
        }
        // Newest first (ids are UUIDv7).
        related.reverse();
        related.truncate(first.clamp(0, 100) as usize);
        charge(ctx, related.len())?;
        Ok(related)
    }
}

fn used_by(step: &StepView, kind: Used) -> Option<String> {
    let step_kind = flowline_domain::StepKind::parse(&step.kind)?;
    match kind {
        Used::Tool => tool_of(step_kind, &step.config.0),
        Used::Model => model_of(step_kind, &step.config.0),
    }
}

/// A workflow run.
#[Object]
impl Workflow {
    /// The run's id.
    async fn id(&self) -> Uuid {
        self.view.id
    }
    /// Tenant owning it.
    async fn tenant(&self) -> &str {
        &self.view.tenant
    }
    /// Human-readable name.
    async fn name(&self) -> &str {
        &self.view.name
    }
    /// Lifecycle status: `pending`, `running`, `paused`, `succeeded`, `failed` or
    /// `cancelled`.
    async fn status(&self) -> &str {
        &self.view.status
    }
    /// When the executor took it up; null while it waits.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.view.started_at
    }
    /// When it succeeded, failed or was cancelled; null while it is not finished (and for
    /// a run rebuilt `asOf` a time).
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.view.finished_at
    }
    /// Why it failed, when it did.
    async fn failure(&self) -> Option<&FailureView> {
        self.view.failure.as_ref()
    }
    /// Version of the stream this view reflects.
    async fn version(&self) -> i64 {
        self.view.version
    }
    /// The time this view was rebuilt for (`workflow(asOf:)`); null for the current view.
    async fn as_of(&self) -> Option<DateTime<Utc>> {
        self.as_of
    }
    /// The run's input.
    async fn input(&self) -> &async_graphql::Json<serde_json::Value> {
        &self.view.input
    }
    /// Why it was cancelled, if it was.
    async fn cancel_reason(&self) -> Option<&str> {
        self.view.cancel_reason.as_deref()
    }
    /// Who submitted it, when known.
    async fn submitted_by(&self) -> Option<&str> {
        self.view.submitted_by.as_deref()
    }
    /// When it was submitted.
    async fn submitted_at(&self) -> DateTime<Utc> {
        self.view.submitted_at
    }
    /// When its last event (up to `version`) happened.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.view.updated_at
    }
    /// What the model calls of all its steps used and cost (exact decimal); null when none
    /// called a model.
    async fn usage(&self) -> Option<&UsageView> {
        self.view.usage.as_ref()
    }
    /// Steps in submission order (loaded with the workflow, one statement per page).
    #[graphql(complexity = "ASSUMED_STEPS * child_complexity")]
    async fn steps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Step>> {
        charge(ctx, self.view.steps.len())?;
        Ok((0..self.view.steps.len()).map(|i| self.step(i)).collect())
    }
    /// A page of the stream's events in version order, up to `version` (batched across
    /// workflows): `first` (1 to 1000, default 50) events after version `afterVersion`
    /// (a keyset cursor: pass the last event's version for the next page).
    #[graphql(complexity = "(first.clamp(1, MAX_EVENTS_PAGE) as usize) * child_complexity")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "DEFAULT_EVENTS_PAGE")] first: i32,
        after_version: Option<i64>,
    ) -> async_graphql::Result<Vec<EventView>> {
        let (after, first) = events_page(first, after_version).map_err(graphql_error)?;
        let key = (self.view.tenant.clone(), self.view.id, after, first);
        let events = match self.page.as_ref().and_then(|page| page.events.get(&key)) {
            Some(events) => Some(events.clone()),
            None => ctx
                .data::<DataLoader<EventsLoader>>()?
                .load_one(key)
                .await
                .map_err(graphql_error)?,
        }
        .unwrap_or_default();
        let events: Vec<EventView> = events
            .iter()
            .filter(|event| event.version <= self.view.version)
            .cloned()
            .collect();
        charge(ctx, events.len())?;
        Ok(events)
    }
    /// Tools its `mcp_tool` steps call (`server/tool`), sorted.
    async fn tools(&self) -> Vec<String> {
        self.used(Used::Tool).into_iter().collect()
    }
    /// Models its `llm` steps use, sorted.
    async fn models(&self) -> Vec<String> {
        self.used(Used::Model).into_iter().collect()
    }
    /// Other runs of the tenant calling at least one of the tools this run calls (from the
    /// graph view), newest first, at most `first` (up to 100).
    #[graphql(complexity = "(first.clamp(0, 100) as usize) * child_complexity")]
    async fn runs_using_same_tools(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: i32,
    ) -> async_graphql::Result<Vec<RelatedRun>> {
        self.runs_sharing(ctx, Used::Tool, first).await
    }
    /// Other runs of the tenant using at least one of the models this run uses (from the
    /// graph view), newest first, at most `first` (up to 100).
    #[graphql(complexity = "(first.clamp(0, 100) as usize) * child_complexity")]
    async fn runs_using_same_models(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: i32,
    ) -> async_graphql::Result<Vec<RelatedRun>> {
        self.runs_sharing(ctx, Used::Model, first).await
    }
}

/// Another run sharing tools or models with a workflow.
pub struct RelatedRun {
    id: Uuid,
    name: String,
    shared: Vec<String>,
}

/// Another run sharing tools or models with a workflow.
#[Object]
impl RelatedRun {
    /// Its id.
    async fn id(&self) -> Uuid {
        self.id
    }
    /// Its name.
    async fn name(&self) -> &str {
        &self.name
    }
    /// The tools (or models) both runs use, sorted.
    async fn shared(&self) -> &[String] {
        &self.shared
    }
    /// The run itself (batched), null if the read model does not have it yet.
    async fn workflow(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Workflow>> {
        load_workflow(ctx, tenant(ctx)?, self.id).await
    }
}

/// A step of a workflow run.
pub struct Step {
    workflow: Workflow,
    index: usize,
}

impl Step {
    fn view(&self) -> &StepView {
        &self.workflow.view.steps[self.index]
    }

    fn sibling(&self, id: &str) -> Option<Step> {
        self.workflow
            .view
            .steps
            .iter()
            .position(|step| step.id == id)
            .map(|index| self.workflow.step(index))
    }

    async fn walk(
        &self,
        ctx: &Context<'_>,
        depth: i32,
        upstream: bool,
    ) -> async_graphql::Result<Vec<StepAtDepth>> {
        let depth = u32::try_from(depth)
            .ok()
            .filter(|depth| (1..=MAX_DEPTH).contains(depth))
            .ok_or_else(|| {
                Error::InvalidParameter {
                    parameter: "depth",
                    message: format!("must be between 1 and {MAX_DEPTH}"),
                }
                .extend()
            })?;
        let key = (
            self.workflow.view.id,
            self.view().id.clone(),
            depth,
            upstream,
        );
        let reached = match ctx.data_opt::<DataLoader<WalkLoader, HashMapCache>>() {
            Some(memo) => memo.load_one(key).await,
            None => ctx.data::<DataLoader<WalkLoader>>()?.load_one(key).await,
        }
        .map_err(graphql_error)?
        .unwrap_or_default();
        charge(ctx, reached.len())?;
        Ok(reached
            .iter()
            .filter_map(|reached| {
                self.sibling(&reached.step).map(|step| StepAtDepth {
                    depth: reached.depth,
                    step,
                })
            })
            .collect())
    }
}

/// A step of a workflow run, with its place in the step graph.
#[Object]
impl Step {
    /// Unique within the workflow.
    async fn id(&self) -> &str {
        &self.view().id
    }
    /// `llm`, `mcp_tool`, `template`, `http` or `wait`.
    async fn kind(&self) -> &str {
        &self.view().kind
    }
    /// Lifecycle status (as of the workflow's `asOf`, when given): `pending`, `running`,
    /// `retrying`, `succeeded`, `failed`, `skipped` or `cancelled`.
    async fn status(&self) -> &str {
        &self.view().status
    }
    /// How many attempts it has had.
    async fn attempt_count(&self) -> i32 {
        self.view().attempt_count
    }
    /// Its attempts, oldest first (batched across workflows). A run rebuilt `asOf` a time
    /// has them as the aggregate keeps them: no input, end or duration.
    #[graphql(complexity = "5 * child_complexity")]
    async fn attempts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<AttemptView>> {
        let view = &self.workflow.view;
        let key = (view.tenant.clone(), view.id);
        // A page prefetched the attempts its `steps` asked for; a step reached another way
        // (`dependencies`, a walk) without them asks the loader.
        let prefetched = match &self.workflow.past_attempts {
            Some(past) => Some(past.clone()),
            None => self
                .workflow
                .page
                .as_ref()
                .and_then(|page| page.attempts.get(&key).cloned()),
        };
        let attempts = match prefetched {
            Some(attempts) => Some(attempts),
            None => ctx
                .data::<DataLoader<AttemptsLoader>>()?
                .load_one(key)
                .await
                .map_err(graphql_error)?,
        };
        let attempts = attempts
            .and_then(|by_step| by_step.get(&self.view().id).cloned())
            .unwrap_or_default();
        charge(ctx, attempts.len())?;
        Ok(attempts)
    }
    /// When its first attempt started.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.view().started_at
    }
    /// When it finished (succeeded, failed for good, was skipped or cancelled).
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.view().finished_at
    }
    /// The last failure of its attempts (kept after a later attempt succeeded).
    async fn error(&self) -> Option<&StepErrorView> {
        self.view().error.as_ref()
    }
    /// When its next attempt is due (status `retrying`).
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.view().next_attempt_at
    }
    /// Why it was skipped.
    async fn skip_reason(&self) -> Option<&str> {
        self.view().skip_reason.as_deref()
    }
    /// The output of its successful attempt; null when it is kept by reference (`outputRef`:
    /// larger than the executor's inline limit), which the REST step read
    /// `/v1/workflows/{id}/steps/{step}` returns, one step at a time.
    async fn output(&self) -> Option<async_graphql::Json<serde_json::Value>> {
        self.view().output.clone()
    }
    /// `sha256:<hex>` of an output kept in the payload table rather than on its event.
    async fn output_ref(&self) -> Option<&str> {
        self.view().output_ref.as_deref()
    }
    /// What the model calls of all its attempts used and cost (failed attempts' calls
    /// were billed too); null when it called no model.
    async fn usage(&self) -> Option<&UsageView> {
        self.view().usage.as_ref()
    }
    /// Ids of the steps that must finish first.
    async fn depends_on(&self) -> &[String] {
        &self.view().depends_on
    }
    /// Kind-specific settings.
    async fn config(&self) -> &async_graphql::Json<serde_json::Value> {
        &self.view().config
    }
    /// The tool it calls (`mcp_tool` steps), `server/tool`.
    async fn tool(&self) -> Option<String> {
        used_by(self.view(), Used::Tool)
    }
    /// The model it uses (`llm` steps).
    async fn model(&self) -> Option<String> {
        used_by(self.view(), Used::Model)
    }
    /// The steps it directly depends on (no query: read from the workflow).
    #[graphql(complexity = "ASSUMED_STEPS * child_complexity")]
    async fn dependencies(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Step>> {
        let steps: Vec<Step> = self
            .view()
            .depends_on
            .iter()
            .filter_map(|id| self.sibling(id))
            .collect();
        charge(ctx, steps.len())?;
        Ok(steps)
    }
    /// The steps directly depending on it (no query: read from the workflow).
    #[graphql(complexity = "ASSUMED_STEPS * child_complexity")]
    async fn dependents(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Step>> {
        let id = &self.view().id;
        let steps = &self.workflow.view.steps;
        let dependents: Vec<Step> = (0..steps.len())
            .filter(|&i| steps[i].depends_on.contains(id))
            .map(|index| self.workflow.step(index))
            .collect();
        charge(ctx, dependents.len())?;
        Ok(dependents)
    }
    /// Every step it depends on, transitively, up to `depth` hops (1 to 50), nearest
    /// first, each at its shortest distance (from the graph view).
    #[graphql(complexity = "(depth.clamp(1, 50) as usize) * child_complexity")]
    async fn transitive_dependencies(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] depth: i32,
    ) -> async_graphql::Result<Vec<StepAtDepth>> {
        self.walk(ctx, depth, true).await
    }
    /// Every step depending on it, transitively, up to `depth` hops (1 to 50), nearest
    /// first, each at its shortest distance (from the graph view).
    #[graphql(complexity = "(depth.clamp(1, 50) as usize) * child_complexity")]
    async fn transitive_dependents(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] depth: i32,
    ) -> async_graphql::Result<Vec<StepAtDepth>> {
        self.walk(ctx, depth, false).await
    }
}

/// A step reached by a walk, with the number of hops to it.
#[derive(SimpleObject)]
pub struct StepAtDepth {
    /// Hops from the starting step (1 = direct).
    depth: u32,
    /// The step.
    step: Step,
}

/// How many of the newest runs using a tool (or model) are asked for, per tool: enough
/// for the largest `first` of `runsUsingSameTools`/`runsUsingSameModels` plus the run
/// itself.
const RELATED_RUNS_ASKED: u32 = 101;

/// A valid events page: (after version, page size).
fn events_page(first: i32, after_version: Option<i64>) -> Result<(i64, i64), Error> {
    if !(1..=MAX_EVENTS_PAGE).contains(&first) {
        return Err(Error::InvalidParameter {
            parameter: "first",
            message: format!("must be between 1 and {MAX_EVENTS_PAGE}"),
        });
    }
    let after = after_version.unwrap_or(0);
    if after < 0 {
        return Err(Error::InvalidParameter {
            parameter: "afterVersion",
            message: "must not be negative".into(),
        });
    }
    Ok((after, first.into()))
}

/// The events page an `events` selection asks for, from its arguments.
fn events_page_of(arguments: &[(Name, async_graphql::Value)]) -> Result<(i64, i64), Error> {
    let argument = |name: &str| {
        arguments
            .iter()
            .find(|(argument, _)| argument.as_str() == name)
            .and_then(|(_, value)| match value {
                async_graphql::Value::Number(number) => number.as_i64(),
                _ => None,
            })
    };
    let first = argument("first").map_or(Ok(DEFAULT_EVENTS_PAGE), i32::try_from);
    events_page(first.unwrap_or(0), argument("afterVersion"))
}
