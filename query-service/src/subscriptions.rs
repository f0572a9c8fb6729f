//! GraphQL subscriptions (`graphql-transport-ws` on `/graphql/ws`) over the read model's
//! change feed.
//!
//! Every stream follows one rule: subscribe to the feed first, then read from the database,
//! then re-read whenever a change may concern it (or the feed says changes may have been
//! missed). Notifications only wake readers; what a client receives always comes from the
//! committed read model, so it can neither see uncommitted state nor miss a change.

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, ClientMessage, WebSocketProtocols, WsMessage};
use async_graphql::{Context, Data, ErrorExtensions, InputObject, SimpleObject, Subscription};
use async_graphql_axum::GraphQLProtocol;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;
use axum::response::{IntoResponse, Response};
use flowline_access::{Access, Caller, Role};
use flowline_service_kit::request::TENANT_HEADER;
use futures::{SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::Result;
use crate::application::AppState;
use crate::changes::{Change, ChangeFeed, Changes};
use crate::config::ReadLimits;
use crate::graphql::{QuerySchema, Tenant, Workflow};
use crate::log_cursor::LogCursor;
use crate::read_model::{EventFilter, EventView, LoggedEvent, ReadModel};
use crate::step_output::{LiveChannel, StepOutputEvent, StepOutputFollower};

/// Events read from the database per round trip while catching up.
const PAGE: i64 = 500;

/// Close codes this endpoint uses besides the library's (`graphql-transport-ws` defines
/// 4408 and 4409; 1009 and 1013 are RFC 6455's).
mod close {
    /// No `connection_init` in time.
    pub const INIT_TIMEOUT: u16 = 4408;
    /// A second subscription with an id still running.
    pub const DUPLICATE_ID: u16 = 4409;
    /// A message larger than `WS_MAX_MESSAGE_BYTES`.
    pub const TOO_BIG: u16 = 1009;
    /// The tenant holds `WS_MAX_CONNECTIONS_PER_TENANT` connections already.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The credentials expired while the connection was open.
    pub const UNAUTHORIZED: u16 = 4401;
    /// `connection_init` carried no valid credentials, or ones granting no reads.
    pub const FORBIDDEN: u16 = 4403;
}

/// Open connections per tenant, shared by every connection of the process.
#[derive(Debug, Clone)]
pub(crate) struct WebSockets {
    limits: ReadLimits,
    per_tenant: Arc<Mutex<HashMap<String, usize>>>,
    /// Opens the personal fields of what subscriptions send (ADR 26).
    vault: flowline_personal_data::Vault,
}

/// One tenant's connection counted for as long as it is held.
#[derive(Debug)]
struct Slot {
    tenant: String,
    per_tenant: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_tenant = self.per_tenant.lock().expect("connection counts");
        if let Some(count) = per_tenant.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                per_tenant.remove(&self.tenant);
            }
        }
    }
}

impl WebSockets {
    pub(crate) fn new(limits: ReadLimits, vault: flowline_personal_data::Vault) -> Self {
        Self {
            limits,
            per_tenant: Arc::default(),
            vault,
        }
    }

    fn admit(&self, tenant: &str) -> Option<Slot> {
        let mut per_tenant = self.per_tenant.lock().expect("connection counts");
        let count = per_tenant.entry(tenant.to_owned()).or_default();
        if *count >= self.limits.ws_max_connections_per_tenant {
            return None;
        }
        *count += 1;
        Some(Slot {
            tenant: tenant.to_owned(),
            per_tenant: self.per_tenant.clone(),
        })
    }

    /// Open connections per tenant (for `/metrics`).
    pub(crate) fn open(&self) -> Vec<(String, usize)> {
        let per_tenant = self.per_tenant.lock().expect("connection counts");
        per_tenant.iter().map(|(t, n)| (t.clone(), *n)).collect()
    }
}

/// Upgrades to a GraphQL WebSocket. The credentials come with `connection_init`
/// (`{"authorization": "Bearer <token>"}`, what browsers can send), or with the upgrade's
/// `Authorization` header; the tenant is the credential's (a platform admin may name
/// another with `X-Tenant-Id` or the payload's `tenant`). Without valid credentials the
/// connection is closed (4403) before any subscription starts; when a token expires, the
/// connection is closed (4401).
pub(crate) async fn websocket(
    State(state): State<AppState>,
    // Refuses (400) an upgrade naming no GraphQL subprotocol.
    _: GraphQLProtocol,
    caller: Option<Caller>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(refusal) = state.access.check_websocket_origin(&headers) {
        return refusal.into_response();
    }
    let header_tenant = headers
        .get(TENANT_HEADER)
        .map(|value| value.to_str().unwrap_or("\u{0}").to_owned());
    let protocol = headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .and_then(|offered| {
            offered
                .split(',')
                .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        })
        .unwrap_or(WebSocketProtocols::GraphQLWS);
    let schema = state.schema.clone();
    let websockets = state.websockets.clone();
    let access = state.access.clone();
    let max_message = websockets.limits.ws_max_message_bytes;
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            Connection {
                websockets,
                access,
                header_caller: caller,
                header_tenant,
                state: Arc::default(),
            }
            .serve(socket, schema, protocol)
        })
        .into_response()
}

/// What the reading and the writing half of one connection share.
#[derive(Debug, Default)]
struct ConnectionState {
    /// `connection_init` arrived (the init timeout no longer applies).
    initialized: bool,
    /// Ids of the subscriptions running.
    running: HashSet<String>,
    /// The tenant's connection slot, held until the connection ends.
    slot: Option<Slot>,
    /// How the connection must be closed instead of what the protocol library says.
    close: Option<(u16, String)>,
    /// When the connection's credentials stop being valid.
    expires_at: Option<tokio::time::Instant>,
    /// The tenant `connection_init` admitted: whose keys open what is sent.
    tenant: Option<String>,
}

/// One WebSocket connection: the protocol (`async_graphql::http::WebSocket`) between a
/// guarded reading half and a writing half that enforces the connection's limits.
struct Connection {
    websockets: WebSockets,
    access: Access,
    /// The caller the upgrade's `Authorization` header proved, if it had one.
    header_caller: Option<Caller>,
    /// The upgrade's `X-Tenant-Id`.
    header_tenant: Option<String>,
    state: Arc<Mutex<ConnectionState>>,
}

impl Connection {
    async fn serve(self, socket: WebSocket, schema: QuerySchema, protocol: WebSocketProtocols) {
        let limits = self.websockets.limits;
        let (mut sink, source) = socket.split();
        // Messages this side answers itself (refused subscriptions), merged into the output.
        let (refusals, mut refused) = mpsc::unbounded_channel::<Message>();
        let input = {
            let state = self.state.clone();
            source
                .scan((), move |(), read| {
                    futures::future::ready(match read {
                        Ok(message) => Some(message),
                        Err(error) => {
                            state.lock().expect("connection state").close = read_failure(error);
                            None
                        }
                    })
                })
                .filter_map(|message| async move {
                    match message {
                        Message::Text(text) => Some(ClientMessage::from_bytes(text.as_bytes())),
                        Message::Binary(bytes) => Some(ClientMessage::from_bytes(bytes)),
                        _ => None,
                    }
                })
                .filter_map({
                    let state = self.state.clone();
                    move |message| {
                        let admitted = admit_message(&state, &refusals, limits, message);
                        async move { admitted }
                    }
                })
        };
        let on_init = {
            let websockets = self.websockets.clone();
            let header_tenant = self.header_tenant.clone();
            let header_caller = self.header_caller.clone();
            let access = self.access.clone();
            let state = self.state.clone();
            move |payload: serde_json::Value| async move {
                let caller =
                    connection_caller(&access, &payload, header_caller, header_tenant).await;
                let caller = match caller {
                    Ok(caller) => caller,
                    Err(detail) => {
                        state.lock().expect("connection state").close =
                            Some((close::FORBIDDEN, detail.clone()));
                        return Err(async_graphql::Error::new(detail));
                    }
                };
                let tenant = caller.tenant().to_owned();
                let Some(slot) = websockets.admit(&tenant) else {
                    // A close reason holds at most 123 bytes: the tenant is not repeated.
                    let reason = format!(
                        "the tenant holds {} connections already (WS_MAX_CONNECTIONS_PER_TENANT)",
                        limits.ws_max_connections_per_tenant
                    );
                    state.lock().expect("connection state").close =
                        Some((close::TRY_AGAIN_LATER, reason.clone()));
                    return Err(async_graphql::Error::new(reason));
                };
                {
                    let mut state = state.lock().expect("connection state");
                    state.slot = Some(slot);
                    state.expires_at = caller.expires_at().map(|at| {
                        let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                        tokio::time::Instant::now() + left
                    });
                    state.tenant = Some(tenant.clone());
                }
                let mut data = Data::default();
                data.insert(Tenant(tenant));
                Ok(data)
            }
        };
        let messages = async_graphql::http::WebSocket::from_message_stream(schema, input, protocol)
            .on_connection_init(on_init);
        futures::pin_mut!(messages);
        let init_deadline = tokio::time::sleep(Duration::from_millis(limits.ws_init_timeout_ms));
        futures::pin_mut!(init_deadline);
        loop {
            let (initialized, expires_at) = {
                let state = self.state.lock().expect("connection state");
                (state.initialized, state.expires_at)
            };
            // Far enough never to fire while no credentials with an expiry were accepted.
            let expiry = tokio::time::sleep_until(
                expires_at
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400)),
            );
            let outgoing = tokio::select! {
                message = messages.next() => match message {
                    Some(message) => self.opened(self.outgoing(message)).await,
                    None => {
                        let close = self.state.lock().expect("connection state").close.take();
                        match close {
                            Some((code, reason)) => closing(code, reason),
                            None => break,
                        }
                    }
                },
                Some(refusal) = refused.recv() => refusal,
                () = &mut init_deadline, if !initialized => closing(
                    close::INIT_TIMEOUT,
                    "Connection initialisation timeout".into(),
                ),
                () = expiry, if expires_at.is_some() => closing(
                    close::UNAUTHORIZED,
                    "the credentials have expired".into(),
                ),
            };
            let last = matches!(outgoing, Message::Close(_));
            if sink.send(outgoing).await.is_err() || last {
                break;
            }
            let close = self.state.lock().expect("connection state").close.take();
            if let Some((code, reason)) = close {
                let _ = sink.send(closing(code, reason)).await;
                break;
            }
        }
        let _ = sink.close().await;
    }

    /// `message` with its personal fields opened in the connection's tenant; a message
    /// whose fields cannot be opened is replaced by closing the connection (retryable).
    async fn opened(&self, message: Message) -> Message {
        let Message::Text(text) = message else {
            return message;
        };
        let tenant = self.state.lock().expect("connection state").tenant.clone();
        let Some(tenant) = tenant else {
            return Message::Text(text);
        };
        match crate::personal::open_text(&self.websockets.vault, &tenant, text.as_str().to_owned())
            .await
        {
            Ok(opened) => Message::Text(opened.into()),
            Err(_) => closing(
                close::TRY_AGAIN_LATER,
                "personal data keys unavailable".into(),
            ),
        }
    }

    /// What the protocol sends, as this connection sends it: a subscription that
    /// completed frees its place, and a refused `connection_init` closes with this
    /// side's code.
    fn outgoing(&self, message: WsMessage) -> Message {
        let mut state = self.state.lock().expect("connection state");
        match message {
            WsMessage::Text(text) => {
                if text.starts_with(r#"{"type":"complete""#)
                    && let Ok(Completed { id }) = serde_json::from_str(&text)
                {
                    state.running.remove(&id);
                }
                Message::Text(text.into())
            }
            WsMessage::Close(code, reason) => {
                let (code, reason) = state.close.take().unwrap_or((code, reason));
                closing(code, reason)
            }
        }
    }
}

/// The `complete` message of a subscription.
#[derive(serde::Deserialize)]
struct Completed {
    id: String,
}

fn closing(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// How a failed read closes the connection: 1009 for a message over the limit; nothing
/// to say when the peer went away.
fn read_failure(error: axum::Error) -> Option<(u16, String)> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match error.into_inner().downcast::<WsError>() {
        Ok(error) if matches!(*error, WsError::Capacity(_)) => Some((
            close::TOO_BIG,
            "message too big (WS_MAX_MESSAGE_BYTES)".into(),
        )),
        _ => None,
    }
}

/// Lets a client message through to the protocol, or answers it here: a subscription
/// beyond `WS_MAX_SUBSCRIPTIONS_PER_CONNECTION` gets an `error` message for its id, and a
/// subscription reusing a running id closes the connection (4409, as the protocol says).
fn admit_message(
    state: &Mutex<ConnectionState>,
    refusals: &mpsc::UnboundedSender<Message>,
    limits: ReadLimits,
    message: serde_json::Result<ClientMessage>,
) -> Option<serde_json::Result<ClientMessage>> {
    let mut state = state.lock().expect("connection state");
    match &message {
        Ok(ClientMessage::ConnectionInit { .. }) => state.initialized = true,
        Ok(ClientMessage::Start { id, .. }) if state.running.contains(id) => {
            let _ = refusals.send(closing(
                close::DUPLICATE_ID,
                format!(
                    "Subscriber for {} already exists",
                    crate::error::bounded_to(id, 64)
                ),
            ));
            return None;
        }
        Ok(ClientMessage::Start { id, .. }) if state.initialized => {
            if state.running.len() >= limits.ws_max_subscriptions_per_connection {
                let refusal = serde_json::json!({
                    "type": "error",
                    "id": id,
                    "payload": [{
                        "message": format!(
                            "this connection runs {} subscriptions already \
                             (WS_MAX_SUBSCRIPTIONS_PER_CONNECTION): complete one first",
                            limits.ws_max_subscriptions_per_connection
                        ),
                        "extensions": {"code": "too-many-subscriptions"},
                    }],
                });
                let _ = refusals.send(Message::Text(refusal.to_string().into()));
                return None;
            }
            state.running.insert(id.clone());
        }
        Ok(ClientMessage::Stop { id }) => {
            state.running.remove(id);
        }
        _ => {}
    }
    Some(message)
}

/// The caller of a connection: the `connection_init` payload's `authorization` (with
/// its `tenant` or the upgrade's `X-Tenant-Id`), else the upgrade's own credentials.
/// Refusals are short enough for a close reason (123 bytes).
async fn connection_caller(
    access: &Access,
    payload: &serde_json::Value,
    header_caller: Option<Caller>,
    header_tenant: Option<String>,
) -> std::result::Result<Caller, String> {
    let requested = payload
        .get("tenant")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .or(header_tenant);
    let caller = match payload
        .get("authorization")
        .and_then(serde_json::Value::as_str)
    {
        Some(authorization) => access
            .caller(
                flowline_access::bearer_credential(authorization).unwrap_or(authorization.trim()),
                requested.as_deref(),
            )
            .await
            .map_err(|refusal| {
                if refusal.is_unauthenticated() {
                    "Forbidden: invalid credentials".to_owned()
                } else {
                    "Forbidden: the credentials may not act in that tenant".to_owned()
                }
            })?,
        None => header_caller.ok_or_else(|| {
            "Forbidden: send {\"authorization\": \"Bearer <token>\"} in connection_init".to_owned()
        })?,
    };
    caller
        .require(Role::Reader)
        .map_err(|_| "Forbidden: the credentials grant no reads".to_owned())?;
    Ok(caller)
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
        let changes = ctx.data::<ChangeFeed>()?.subscribe_tenant(&tenant);
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
        let changes = ctx.data::<ChangeFeed>()?.subscribe_tenant(&tenant);
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

    /// What a step produces while it runs, in order: a streaming model's text (`TOKEN`), a
    /// tool's progress (`PROGRESS`), the end of each attempt (`ATTEMPT_FINISHED`; a retry's
    /// output follows under its own `attempt`), from its first token even when subscribed
    /// late; then, once the step is finished, one `COMPLETED` item with its status, output,
    /// error and usage, and the subscription ends. Before the run exists it waits for it;
    /// a run without that step is an error.
    async fn step_output(
        &self,
        ctx: &Context<'_>,
        workflow_id: Uuid,
        step_id: String,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<StepOutputEvent>> + use<>>
    {
        let tenant = ctx.data::<Tenant>()?.0.clone();
        Ok(StepOutputFollower {
            read_model: ctx.data::<ReadModel>()?.clone(),
            // Subscribed before the step is first read: a change in between is announced.
            changes: ctx.data::<ChangeFeed>()?.subscribe_tenant(&tenant),
            live: ctx.data::<LiveChannel>()?.clone(),
            tenant,
            workflow_id,
            step_id,
        }
        .stream())
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
                    changes.count_read();
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
                self.changes.count_read();
                let page = match self
                    .read_model
                    .events_after(&self.tenant, &self.cursor, &self.filter, PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(error) => return Some(Err(error)),
                };
                // A full page may have more behind it; a short one read all there was.
                stale = page.len() as i64 == PAGE;
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
