//! The GraphQL schema.

use async_graphql::{Context, EmptyMutation, ErrorExtensions, Object, Schema, SimpleObject};
use uuid::Uuid;

use crate::Error;
use crate::changes::ChangeFeed;
use crate::read_model::{ListFilter, ReadModel, WorkflowView};
use crate::subscriptions::SubscriptionRoot;

/// The tenant of the request, put into the GraphQL context by the HTTP handler.
pub struct Tenant(pub String);

/// The schema type.
pub type QuerySchema = Schema<QueryRoot, EmptyMutation, SubscriptionRoot>;

/// Builds the schema over `read_model`; subscriptions follow `changes`.
pub fn schema(read_model: ReadModel, changes: ChangeFeed) -> QuerySchema {
    Schema::build(QueryRoot, EmptyMutation, SubscriptionRoot)
        .data(read_model)
        .data(changes)
        .limit_depth(12)
        .limit_complexity(5_000)
        .finish()
}

/// A page of workflows.
#[derive(SimpleObject)]
pub struct WorkflowConnection {
    /// The page's workflows, newest first.
    nodes: Vec<WorkflowView>,
    /// Pagination state.
    page_info: PageInfo,
}

/// Where a page ends.
#[derive(SimpleObject)]
pub struct PageInfo {
    /// Whether another page follows.
    has_next_page: bool,
    /// Pass as `after` for the next page.
    end_cursor: Option<String>,
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
        })
    }
}

/// Read queries.
pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// One workflow run, or null when it does not exist for this tenant.
    async fn workflow(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Option<WorkflowView>> {
        let tenant = ctx.data::<Tenant>()?;
        ctx.data::<ReadModel>()?
            .workflow(&tenant.0, id)
            .await
            .map_err(|e| e.extend())
    }

    /// Workflow runs, newest first, with cursor pagination.
    async fn workflows(
        &self,
        ctx: &Context<'_>,
        status: Option<String>,
        #[graphql(default = 20)] first: i64,
        after: Option<String>,
    ) -> async_graphql::Result<WorkflowConnection> {
        let tenant = ctx.data::<Tenant>()?;
        let filter = ListFilter {
            status,
            limit: Some(first),
            cursor: after,
            ..ListFilter::default()
        };
        let page = ctx
            .data::<ReadModel>()?
            .list(&tenant.0, &filter)
            .await
            .map_err(|e| e.extend())?;
        Ok(WorkflowConnection {
            page_info: PageInfo {
                has_next_page: page.next_cursor.is_some(),
                end_cursor: page.next_cursor,
            },
            nodes: page.items,
        })
    }
}
