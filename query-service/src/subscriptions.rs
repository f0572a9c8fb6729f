//! GraphQL subscriptions (`graphql-transport-ws` on `/graphql/ws`) over the read model's
//! change feed.
//!
//! Every stream follows one rule: subscribe to the feed first, then read from the database,
//! then re-read whenever a change may concern it (or the feed says changes may have been
//! missed). Notifications only wake readers; what a client receives always comes from the
//! committed read model, so it can neither see uncommitted state nor miss a change.

use std::collections::VecDeque;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::{Context, Data, ErrorExtensions, InputObject, SimpleObject, Subscription};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use flowline_service_kit::Problem;
use flowline_service_kit::request::{TENANT_HEADER, valid_tenant};
use futures::Stream;
use uuid::Uuid;

use crate::application::AppState;
use crate::changes::{Change, ChangeFeed, Changes};
use crate::graphql::Tenant;
use crate::graphql::Workflow;
use crate::log_cursor::LogCursor;
use crate::read_model::{EventFilter, EventView, LoggedEvent, ReadModel};
use crate::{Error, Result};

/// Events read from the database per round trip while catching up.
const PAGE: i64 = 500;

/// Upgrades to a GraphQL WebSocket. The tenant comes from the `connection_init` payload
/// (`{"tenant": "acme"}`, what browsers can send) or the upgrade's `X-Tenant-Id` header;
/// without one the connection is refused, since a subscription has no default tenant to
/// fall back on silently.
pub(crate) async fn websocket(
    State(state): State<AppState>,
    protocol: GraphQLProtocol,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header_tenant = match headers.get(TENANT_HEADER) {
        None => None,
        Some(value) => {
            match valid_tenant(value.to_str().unwrap_or_default(), "header", "X-Tenant-Id") {
                Ok(tenant) => Some(tenant),
                Err(problem) => return problem.into_response(),
            }
        }
    };
    let schema = state.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let tenant = connection_tenant(&payload, header_tenant)
                        .map_err(|error| error.extend())?;
                    let mut data = Data::default();
                    data.insert(Tenant(tenant));
                    Ok(data)
                })
                .serve()
        })
        .into_response()
}

/// The connection's tenant. Its error text ends up as the WebSocket close reason, which
/// may hold at most 123 bytes.
fn connection_tenant(payload: &serde_json::Value, header: Option<String>) -> Result<String> {
    let given = match payload.get("tenant") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(tenant)) => Some(valid_tenant(
            tenant,
            "field",
            "connection_init payload.tenant",
        )?),
        Some(_) => {
            return Err(invalid_init("payload.tenant must be a string"));
        }
    };
    match (given, header) {
        (Some(given), Some(header)) if given != header => Err(invalid_init(
            "payload.tenant and the X-Tenant-Id header differ",
        )),
        (Some(tenant), _) | (None, Some(tenant)) => Ok(tenant),
        (None, None) => Err(invalid_init(
            "missing tenant: send {\"tenant\": \"...\"} in connection_init or the X-Tenant-Id header",
        )),
    }
}

fn invalid_init(detail: &str) -> Error {
    Error::Request(
        Problem::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid-connection-init",
            "Invalid connection_init",
            detail,
        )
        .with("field", "tenant"),
    )
}

/// Which events `workflowEvents` yields.
#[derive(Debug, Default, InputObject)]
pub struct WorkflowEventFilter {
    /// Only this workflow's events.
    workflow_id: Option<Uuid>,
    /// Only events of these types (`WorkflowSubmitted`, `SignalReceived`, ...).
    types: Option<Vec<String>>,
}

/// An event as the log delivered it.
#[derive(Debug, SimpleObject)]
pub struct StreamedEvent {
    /// The workflow (stream) it belongs to.
    workflow_id: Uuid,
    /// The event.
    #[graphql(flatten)]
    event: EventView,
    /// Its log partition.
    log_partition: i32,
    /// Its offset in that partition.
    log_offset: i64,
    /// Pass as `after` to resume right after this event.
    cursor: String,
}

/// Live updates.
pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// The workflow as projected: first as it is now (once it exists), then each time its
    /// version advances. Versions only grow; several events projected in one batch arrive
    /// as one update.
    async fn workflow_updated(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Workflow>> + use<>> {
        let tenant = ctx.data::<Tenant>()?.0.clone();
        let read_model = ctx.data::<ReadModel>()?.clone();
        let changes = ctx.data::<ChangeFeed>()?.subscribe();
        Ok(workflow_updates(read_model, changes, tenant, id))
    }

    /// The tenant's events in log order (per partition; a workflow's events are in version
    /// order). Without `after`: the events projected from now on. With `after` (a `cursor`
    /// this subscription yielded, or `""` for the very first event): every event after it,
    /// then the new ones, with no gap and no duplicate, across disconnects and restarts.
    async fn workflow_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<WorkflowEventFilter>,
        after: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<StreamedEvent>> + use<>>
    {
        let tenant = ctx.data::<Tenant>()?.0.clone();
        let read_model = ctx.data::<ReadModel>()?.clone();
        let changes = ctx.data::<ChangeFeed>()?.subscribe();
        let filter = filter.unwrap_or_default();
        let filter = EventFilter {
            workflow_id: filter.workflow_id,
            types: filter.types,
        };
        // The feed is subscribed to above, before the starting point is read: a change
        // committed in between is both after the cursor and announced.
        let cursor = match after {
            Some(after) => LogCursor::decode(&after, "after").map_err(|e| e.extend())?,
            None => read_model
                .latest_positions(&tenant)
                .await
                .map_err(|e| e.extend())?,
        };
        Ok(event_updates(EventReader {
            read_model,
            changes,
            tenant,
            filter,
            cursor,
            pending: VecDeque::new(),
        }))
    }
}

fn workflow_updates(
    read_model: ReadModel,
    changes: Changes,
    tenant: String,
    id: Uuid,
) -> impl Stream<Item = async_graphql::Result<Workflow>> {
    let state = Some((read_model, changes, 0_i64, true));
    futures::stream::unfold(state, move |state| {
        let tenant = tenant.clone();
        async move {
            let (read_model, mut changes, mut seen, mut stale) = state?;
            loop {
                if stale {
                    match read_model.workflow(&tenant, id).await {
                        Ok(Some(workflow)) if workflow.version > seen => {
                            seen = workflow.version;
                            let workflow = Workflow::current(std::sync::Arc::new(workflow));
                            return Some((Ok(workflow), Some((read_model, changes, seen, false))));
                        }
                        Ok(_) => {}
                        Err(error) => return Some((Err(error.extend()), None)),
                    }
                }
                stale = match changes.next().await? {
                    Change::Workflow(change) => {
                        change.workflow_id == id && change.tenant == tenant && change.version > seen
                    }
                    Change::Resync => true,
                };
            }
        }
    })
}

/// A `workflowEvents` stream's state.
struct EventReader {
    read_model: ReadModel,
    changes: Changes,
    tenant: String,
    filter: EventFilter,
    /// Past the last event handed to the client (or read into `pending`: see `next`).
    cursor: LogCursor,
    /// Read, not yet handed out, with the cursor after each.
    pending: VecDeque<(LoggedEvent, String)>,
}

impl EventReader {
    /// The next event: from what was read, else from the database, else after the next
    /// change that may concern this reader. `None` when the service stops.
    async fn next(&mut self) -> Option<Result<StreamedEvent>> {
        let mut stale = true;
        loop {
            if let Some((logged, cursor)) = self.pending.pop_front() {
                return Some(Ok(StreamedEvent {
                    workflow_id: logged.workflow_id,
                    event: logged.event,
                    log_partition: logged.log_partition,
                    log_offset: logged.log_offset,
                    cursor,
                }));
            }
            if stale {
                let page = match self
                    .read_model
                    .events_after(&self.tenant, &self.cursor, &self.filter, PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(error) => return Some(Err(error)),
                };
                stale = !page.is_empty();
                for logged in page {
                    self.cursor.advance(logged.log_partition, logged.log_offset);
                    let cursor = self.cursor.encode();
                    self.pending.push_back((logged, cursor));
                }
                continue;
            }
            stale = match self.changes.next().await? {
                Change::Workflow(change) => {
                    change.tenant == self.tenant
                        && self.filter.may_concern(change.workflow_id)
                        && self
                            .cursor
                            .precedes(change.log_partition, change.log_offset)
                }
                Change::Resync => true,
            };
        }
    }
}

fn event_updates(reader: EventReader) -> impl Stream<Item = async_graphql::Result<StreamedEvent>> {
    futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.next().await? {
            Ok(event) => Some((Ok(event), Some(reader))),
            Err(error) => Some((Err(error.extend()), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_from_payload_or_header_never_defaulted() {
        let payload = serde_json::json!({"tenant": "acme"});
        assert_eq!(connection_tenant(&payload, None).unwrap(), "acme");
        assert_eq!(
            connection_tenant(&serde_json::json!({}), Some("acme".into())).unwrap(),
            "acme"
        );
        assert_eq!(
            connection_tenant(&payload, Some("acme".into())).unwrap(),
            "acme"
        );
        for (payload, header) in [
            (serde_json::json!({}), None),
            (serde_json::Value::Null, None),
            (serde_json::json!({"tenant": 3}), None),
            (serde_json::json!({"tenant": "no spaces"}), None),
            (payload.clone(), Some("other".to_owned())),
        ] {
            let error = connection_tenant(&payload, header).unwrap_err();
            assert!(
                error.to_problem().detail.len() <= 123,
                "a close reason holds 123 bytes"
            );
        }
    }
}
