//! The daemon's HTTP/JSON API on a Unix socket.
//!
//! The routes are data: [`xdpath_api::Endpoint::ALL`] lists every
//! operation (method, path, summary). [`build`] makes the router from it,
//! with one handler per endpoint chosen by an exhaustive match
//! ([`router`]), and the OpenAPI document (`control/openapi.json`) is
//! generated from the same list and from the request and response types of
//! `xdpath-api` (see `xdpath_api::openapi`). [`check_router`] drives a
//! router with the document's requests and reports where they disagree,
//! without a socket.
//!
//! | method | path                        | what                                  |
//! |--------|-----------------------------|---------------------------------------|
//! | GET    | /v1/health                  | liveness and a summary                |
//! | GET    | /v1/flows                   | exact rules                           |
//! | POST   | /v1/flows                   | add one exact rule                    |
//! | PUT    | /v1/flows                   | replace all exact rules, atomically   |
//! | DELETE | /v1/flows/{id}              | delete one exact rule                 |
//! | GET    | /v1/prefixes                | prefix rules                          |
//! | POST   | /v1/prefixes                | add one prefix rule                   |
//! | PUT    | /v1/prefixes                | replace all prefix rules, atomically  |
//! | DELETE | /v1/prefixes/{id}           | delete one prefix rule                |
//! | GET    | /v1/guests                  | the guests, their sockets and counters|
//! | POST   | /v1/guests                  | add a guest (and start serving it)    |
//! | GET    | /v1/guests/{name}           | one guest                             |
//! | DELETE | /v1/guests/{name}           | remove a guest (`?force=true`: with its rules) |
//! | GET    | /v1/queues                  | queues, their sockets and counters    |
//! | POST   | /v1/queues/{queue}/replace  | replace a queue's AF_XDP socket       |
//! | GET    | /v1/stats                   | classifier and per-queue counters     |
//! | GET    | /metrics                    | OpenMetrics text                      |
//!
//! Errors are [`xdpath_api::ErrorBody`] (`{"error": "...", "field": "..."}`)
//! with 400 (bad input; the message names the field), 404 (unknown id or
//! route), 408 (a body that stalled), 409 (duplicate or conflict), 413 (a
//! body over its route's cap, or a bulk list over the rule cap), 507 (the
//! table is full) or 500; a connection over the server's cap waits for a
//! slot rather than being refused, and a client trickling its request
//! head gives its slot up to one waiting (`api::server`). A
//! rejected write changes nothing. A message repeats at most
//! `xdpath_api::rules::ECHO_MAX` characters of any value it was given, and
//! is at most [`MAX_MESSAGE`] characters long.
//!
//! Limits: each route's body cap ([`body_limit`]: 64 KiB, a bulk list 256
//! bytes per rule the maps hold) is checked against `Content-Length` before
//! the handler runs and enforced while the body is read; the rule caps
//! (`max_flows`, `max_prefixes` of [`DaemonConfig`]) are checked while a
//! bulk list is read (it stops at the first rule too many) and before a
//! single add. A bulk list is parsed as it arrives, on a blocking thread,
//! one list at a time ([`BulkGate`]), and validated rule by rule into the
//! new set ([`crate::flow_table::BulkRules`], on a second thread: `bulk`);
//! its text is never held whole, and `PUT` answers with the count and the
//! generation ([`Replaced`]), not the list. At most two listings are in
//! memory at once ([`ListGate`]). The socket, the connection cap and the
//! timeouts are [`server`]'s.
//!
//! `/metrics` is encoded by `prometheus-client` from the same snapshots
//! `/v1/stats` reads (a collector, not a second set of counters), so label
//! values are escaped.
//!
//! Shared state ([`ControlState`]): the classifier and the flow table in one
//! mutex (every map write goes through it; held only for map syscalls, on a
//! blocking thread), and the guests ([`GuestSet`]: the registry and, per
//! guest, its socket pool and dataplane handle; its mutex comes before the
//! maps' one). A rule is added under the guests' lock, so the guest it
//! names cannot go meanwhile; a bulk list is checked against a snapshot of
//! the names.

mod body;
mod bulk;
pub mod server;

pub use body::{body_limit, BodyError, BULK_BYTES_PER_RULE, SMALL_BODY};

use crate::config::DaemonConfig;
use crate::flood::FloodStats;
use crate::flow_table::{FlowTable, FlowTableError};
use crate::guest_registry::GuestError;
use crate::guests::{GuestSet, GuestSetError};
use crate::platform::{ClassifierMaps, Platform};
use crate::rules::{
    echo, read_flow_specs, read_prefix_specs, FlowRule, FlowRuleSpec, ListedRules, PrefixRule,
    PrefixRuleSpec, RuleKind,
};
use crate::socket_pool::{self, PoolError};
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde_json::Value;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tower::ServiceExt;
use xdpath_api::openapi::METRICS_CONTENT_TYPE;
use xdpath_api::{
    ClassifierCounters, Endpoint, ErrorBody, GuestInfo, GuestSpec, Health, Method,
    QueueCounterValues, QueueSocket, QueueStats, QueueStatus, Replaced, SocketState, Stats,
};

/// The maps' source of truth and their projection, behind one mutex.
pub struct Tables<M> {
    /// The classifier's maps (the attached classifier, or fakes).
    pub classifier: M,
    /// The flow table (exact and prefix rules, guest entries).
    pub flows: FlowTable,
}

impl<M> AsMut<M> for Tables<M> {
    fn as_mut(&mut self) -> &mut M {
        &mut self.classifier
    }
}

/// Everything the handlers share, on the kernel or in memory
/// ([`crate::platform`]).
pub struct ControlState<P: Platform> {
    /// Classifier + flow table (shared with the guests' connection hooks).
    pub tables: Arc<Mutex<Tables<P::Maps>>>,
    /// The guests: their registry and what runs for each.
    pub guests: GuestSet<P>,
    /// The wire's broadcast slow path's counters, once it runs.
    pub flood: std::sync::OnceLock<Arc<FloodStats>>,
    /// The configuration the daemon runs with.
    pub cfg: DaemonConfig,
    /// When the daemon started.
    pub started: Instant,
    /// The XDP program's id.
    pub prog_id: u32,
    /// The API server's own counters (`server::serve` updates them).
    pub api_stats: Arc<server::ConnStats>,
}

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: message.into(),
                field: None,
            },
        }
    }

    fn bad_field(field: &str, message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: message,
                field: Some(field.to_string()),
            },
        }
    }
}

/// The longest error message the API sends (characters): the messages
/// are sentences; this only guards against one that repeats too much.
pub const MAX_MESSAGE: usize = 1024;

/// `text` cut after `max` characters.
fn cut(mut text: String, max: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
        text.push_str("...");
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: cut(self.body.error, MAX_MESSAGE),
            field: self.body.field.map(|f| cut(f, xdpath_api::rules::ECHO_MAX)),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        Self::new(e.status(), e.to_string())
    }
}

impl From<FlowTableError> for ApiError {
    fn from(e: FlowTableError) -> Self {
        Self {
            status: StatusCode::from_u16(e.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: ErrorBody {
                field: e.field().map(str::to_string),
                error: e.to_string(),
            },
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let status = match e {
            PoolError::NoSuchQueue(_) => StatusCode::NOT_FOUND,
            PoolError::Busy(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<crate::rules::RuleError> for ApiError {
    fn from(e: crate::rules::RuleError) -> Self {
        Self::bad_field(e.field(), e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Runs `f` on a blocking thread (map syscalls, worker handshakes).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("The request handler failed: {e}."),
        )
    })
}

/// What the fallback answers for a path the API does not have.
pub const NO_SUCH_PATH: &str = "No such API path; see control/openapi.json.";

/// The axum method filter of an API method.
fn method_filter(m: Method) -> MethodFilter {
    match m {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// `"PUT /v1/flows"`: an endpoint as messages name it.
fn route_name(e: Endpoint) -> &'static str {
    match e {
        Endpoint::Health => "GET /v1/health",
        Endpoint::ListFlows => "GET /v1/flows",
        Endpoint::AddFlow => "POST /v1/flows",
        Endpoint::ReplaceFlows => "PUT /v1/flows",
        Endpoint::DeleteFlow => "DELETE /v1/flows/{id}",
        Endpoint::ListPrefixes => "GET /v1/prefixes",
        Endpoint::AddPrefix => "POST /v1/prefixes",
        Endpoint::ReplacePrefixes => "PUT /v1/prefixes",
        Endpoint::DeletePrefix => "DELETE /v1/prefixes/{id}",
        Endpoint::ListGuests => "GET /v1/guests",
        Endpoint::AddGuest => "POST /v1/guests",
        Endpoint::GetGuest => "GET /v1/guests/{name}",
        Endpoint::DeleteGuest => "DELETE /v1/guests/{name}",
        Endpoint::Queues => "GET /v1/queues",
        Endpoint::ReplaceQueue => "POST /v1/queues/{queue}/replace",
        Endpoint::Stats => "GET /v1/stats",
        Endpoint::Metrics => "GET /metrics",
    }
}

/// The body cap of endpoint `e` ([`body_limit`]) in front of its handler: a
/// body announced larger is refused (413) before the handler runs and
/// before any of it is read; a longer one is cut off at the cap.
async fn cap_body(e: Endpoint, req: Request<Body>, next: axum::middleware::Next) -> Response {
    let limit = body_limit(e);
    if body::announced(req.headers(), req.body()) > limit as u64 {
        return ApiError::from(BodyError::TooLarge {
            limit,
            route: route_name(e).to_string(),
        })
        .into_response();
    }
    let req = req.map(|b| Body::new(body::Capped::new(b, limit, route_name(e))));
    next.run(req).await
}

/// The router over every endpoint of [`Endpoint::ALL`]: each under its
/// path and method with the handler `handler` gives it behind its body cap
/// ([`body_limit`]), plus the 404 fallback. Generic over the state so a
/// router can be built with other handlers (tests, a daemon with fake
/// maps).
pub fn build<S: Clone + Send + Sync + 'static>(
    handler: impl Fn(Endpoint) -> MethodRouter<S>,
) -> Router<S> {
    Endpoint::ALL
        .into_iter()
        .fold(Router::new(), |r, e| {
            let capped = handler(e).layer(axum::middleware::from_fn(move |req, next| {
                cap_body(e, req, next)
            }));
            r.route(e.path(), capped)
        })
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, NO_SUCH_PATH) })
        // No handler uses axum's body extractors; should one, it gets the
        // small cap.
        .layer(axum::extract::DefaultBodyLimit::max(SMALL_BODY))
}

/// One bulk list is read and validated at a time: each can hold as many
/// rules as the maps, in memory, until it replaces the table. Others wait
/// for it before they read their body.
#[derive(Clone, Debug)]
pub struct BulkGate(Arc<tokio::sync::Semaphore>);

impl Default for BulkGate {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(1)))
    }
}

/// At most two listings of rules are in memory at once, from the table's
/// copy to the last byte sent (a million rules are about 170 MB of both);
/// other listings wait for them.
#[derive(Clone, Debug)]
pub struct ListGate(Arc<tokio::sync::Semaphore>);

impl Default for ListGate {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(2)))
    }
}

/// An answer's body that holds a gate's permit until it is sent (or
/// dropped).
struct Held {
    inner: Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The daemon's handler of each endpoint, under the endpoint's method.
pub fn handler<P: Platform>(e: Endpoint) -> MethodRouter<Arc<ControlState<P>>> {
    let m = method_filter(e.method());
    match e {
        Endpoint::Health => on(m, health::<P>),
        Endpoint::ListFlows => on(m, list_flows::<P>),
        Endpoint::AddFlow => on(m, add_flow::<P>),
        Endpoint::ReplaceFlows => on(m, replace_flows::<P>),
        Endpoint::DeleteFlow => on(m, delete_flow::<P>),
        Endpoint::ListPrefixes => on(m, list_prefixes::<P>),
        Endpoint::AddPrefix => on(m, add_prefix::<P>),
        Endpoint::ReplacePrefixes => on(m, replace_prefixes::<P>),
        Endpoint::DeletePrefix => on(m, delete_prefix::<P>),
        Endpoint::ListGuests => on(m, guests::<P>),
        Endpoint::AddGuest => on(m, add_guest::<P>),
        Endpoint::GetGuest => on(m, get_guest::<P>),
        Endpoint::DeleteGuest => on(m, delete_guest::<P>),
        Endpoint::Queues => on(m, queues::<P>),
        Endpoint::ReplaceQueue => on(m, replace_queue::<P>),
        Endpoint::Stats => on(m, stats::<P>),
        Endpoint::Metrics => on(m, metrics::<P>),
    }
}

/// The daemon's router.
pub fn router<P: Platform>(state: Arc<ControlState<P>>) -> Router {
    build(handler::<P>)
        .layer(Extension(BulkGate::default()))
        .layer(Extension(ListGate::default()))
        .with_state(state)
}

async fn health<P: Platform>(State(s): State<Arc<ControlState<P>>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        iface: s.cfg.iface.clone(),
        xdp_prog_id: s.prog_id,
        xdp_mode: s.cfg.xdp_mode,
        queues: s.cfg.queues,
        guest_connected: s.guests.running().iter().any(|g| g.server().connected()),
        connections: s
            .guests
            .running()
            .iter()
            .map(|g| g.server().connections())
            .sum(),
        uptime_s: s.started.elapsed().as_secs(),
    })
}

fn id_param(raw: &str, field: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_field(
            field,
            format!(
                "Field `{field}`: {} is not a rule id (1 to 4294967295).",
                echo(raw)
            ),
        )
    })
}

/// What a kind of rule is called in messages, and the setting that caps it.
fn kind_words(kind: RuleKind) -> (&'static str, &'static str) {
    match kind {
        RuleKind::Flow => ("exact", "max_flows"),
        RuleKind::Prefix => ("prefix", "max_prefixes"),
    }
}

/// A bulk list with more than `cap` rules (413, field `rules`).
fn too_many(kind: RuleKind, cap: usize) -> ApiError {
    let (what, setting) = kind_words(kind);
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        body: ErrorBody {
            error: format!(
                "Field `rules`: the list has more than {cap} {what} rules, the most this daemon takes (setting {setting}); nothing was changed."
            ),
            field: Some("rules".into()),
        },
    }
}

/// The table already holds `cap` rules of `kind` (507).
fn table_full(kind: RuleKind, cap: usize) -> ApiError {
    let (what, setting) = kind_words(kind);
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "The table holds {cap} {what} rules, the most this daemon takes (setting {setting}); delete some first."
        ),
    )
}

/// The answer to a body a bulk list could not be read from.
fn body_failed(e: std::io::Error) -> ApiError {
    match BodyError::from_io(e) {
        Ok(b) => b.into(),
        Err(e) => BodyError::Client(e.to_string()).into(),
    }
}

/// About the shortest a rule's JSON is (`{"prefix":"::/0","action":"host"}`
/// is 33 bytes; an exact rule 58): rules a body of a given length may hold,
/// to make room for the list.
const MIN_RULE_BYTES: u64 = 48;

/// The first guest of `then` that `rules` send to and `now` no longer has
/// under the same id and name (removed, or removed and its id given to
/// another).
fn removed_since<R: crate::flow_table::TableRule>(
    then: &xdpath_api::rules::GuestTable,
    now: &crate::guest_registry::GuestRegistry,
    rules: &crate::flow_table::NewRules<R>,
) -> Option<String> {
    use xdpath_api::guests::GuestNames;
    then.iter()
        .filter(|(id, name)| now.name_of(*id).as_deref() != Some(*name))
        .find(|(id, _)| rules.name_guest(*id))
        .map(|(_, name)| name.to_string())
}

macro_rules! table_routes {
    ($list:ident, $add:ident, $replace:ident, $delete:ident, $rule:ty, $spec:ty, $read:ident, $kind:expr, $cap:ident, $count:ident, $m_list:ident, $m_add:ident, $m_replace:ident, $m_delete:ident) => {
        async fn $list<P: Platform>(
            State(s): State<Arc<ControlState<P>>>,
            Extension(gate): Extension<ListGate>,
        ) -> ApiResult {
            let permit = gate.0.acquire_owned().await.map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("The list gate failed: {e}."))
            })?;
            let names = s.guests.names();
            let rules = blocking(move || {
                s.tables
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .flows
                    .$m_list()
            })
            .await?;
            let answer = Json(ListedRules { rules: &rules, guests: &names }).into_response();
            Ok(answer.map(|inner| Body::new(Held { inner, _permit: permit })))
        }

        async fn $add<P: Platform>(State(s): State<Arc<ControlState<P>>>, body: Body) -> ApiResult {
            let text = body::read_small(body).await?;
            let spec = <$spec>::from_json(&text)?;
            let cap = s.cfg.$cap as usize;
            let (rule, names) = blocking(move || {
                // Under the guests' lock: no guest goes while its rule is
                // added (the guests' lock comes before the maps').
                s.guests.with_names(|names| {
                    let mut t = s.tables.lock().unwrap_or_else(PoisonError::into_inner);
                    let Tables { classifier, flows } = &mut *t;
                    if flows.$count() >= cap {
                        return Err(table_full($kind, cap));
                    }
                    let rule = flows.$m_add(classifier, spec, names).map_err(ApiError::from)?;
                    Ok((rule, names.names()))
                })
            })
            .await??;
            Ok((StatusCode::CREATED, Json(rule.listed(&names))).into_response())
        }

        async fn $replace<P: Platform>(
            State(s): State<Arc<ControlState<P>>>,
            Extension(gate): Extension<BulkGate>,
            req: Request<Body>,
        ) -> ApiResult {
            let cap = s.cfg.$cap as usize;
            let _one_at_a_time = gate.0.acquire().await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("The bulk gate failed: {e}."),
                )
            })?;
            let started = std::time::Instant::now();
            let announced = body::announced(req.headers(), req.body());
            let expect = usize::try_from(announced / MIN_RULE_BYTES).unwrap_or(cap);
            let names = s.guests.names();
            let checked_against = names.clone();
            let parsed = body::parse_streaming(req.into_body(), move |reader| {
                bulk::read_and_check::<$rule>(reader, cap, expect, $kind, &names, |reader, each| {
                    $read(reader, cap, each)
                })
            })
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Reading the list failed: {e}."),
                )
            })?;
            let rules = parsed?;
            let count = rules.len() as u64;
            let read = started.elapsed();
            let generation = blocking(move || {
                // Under the guests' lock, as a single add: the list was
                // checked against the guests as they were when its reading
                // began, and a guest removed since must not be named by a
                // rule that goes in.
                s.guests.with_names(|now| {
                    if let Some(gone) = removed_since(&checked_against, now, &rules) {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            format!(
                                "Guest {gone:?} was removed while the list was read; nothing \
                                 was changed. Send the list again."
                            ),
                        ));
                    }
                    let mut t = s.tables.lock().unwrap_or_else(PoisonError::into_inner);
                    let Tables { classifier, flows } = &mut *t;
                    flows.$m_replace(classifier, rules).map_err(ApiError::from)
                })
            })
            .await??;
            tracing::info!(
                kind = %$kind,
                count,
                generation,
                read_s = read.as_secs_f64(),
                switched_s = started.elapsed().saturating_sub(read).as_secs_f64(),
                "bulk replace: list read and checked, then switched to"
            );
            Ok(Json(Replaced { count, generation }).into_response())
        }

        async fn $delete<P: Platform>(
            State(s): State<Arc<ControlState<P>>>,
            Path(raw): Path<String>,
        ) -> ApiResult {
            let id = id_param(&raw, "id")?;
            blocking(move || {
                let mut t = s.tables.lock().unwrap_or_else(PoisonError::into_inner);
                let Tables { classifier, flows } = &mut *t;
                flows.$m_delete(classifier, id)
            })
            .await??;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    };
}

table_routes!(
    list_flows,
    add_flow,
    replace_flows,
    delete_flow,
    FlowRule,
    FlowRuleSpec,
    read_flow_specs,
    RuleKind::Flow,
    max_flows,
    flow_count,
    flows,
    add_flow,
    replace_flow_rules,
    delete_flow
);
table_routes!(
    list_prefixes,
    add_prefix,
    replace_prefixes,
    delete_prefix,
    PrefixRule,
    PrefixRuleSpec,
    read_prefix_specs,
    RuleKind::Prefix,
    max_prefixes,
    prefix_count,
    prefixes,
    add_prefix,
    replace_prefix_rules,
    delete_prefix
);

/// The listing of every guest, with its counters and the rules that send
/// to it.
fn guest_infos<P: Platform>(s: &ControlState<P>) -> Vec<GuestInfo> {
    let list = s.guests.list();
    let rules: Vec<usize> = {
        let t = s.tables.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter()
            .map(|(g, _)| t.flows.rules_for_guest(g.id))
            .collect()
    };
    list.iter()
        .zip(rules)
        .map(|((g, r), n)| s.guests.info(g, r.as_deref(), n))
        .collect()
}

async fn guests<P: Platform>(State(s): State<Arc<ControlState<P>>>) -> ApiResult {
    let infos = blocking(move || guest_infos(&s)).await?;
    Ok(Json(infos).into_response())
}

async fn get_guest<P: Platform>(
    State(s): State<Arc<ControlState<P>>>,
    Path(name): Path<String>,
) -> ApiResult {
    let infos = blocking(move || guest_infos(&s)).await?;
    infos
        .into_iter()
        .find(|g| g.name == name)
        .map(|g| Json(g).into_response())
        .ok_or_else(|| GuestError::NotFound(name).into())
}

async fn add_guest<P: Platform>(State(s): State<Arc<ControlState<P>>>, body: Body) -> ApiResult {
    let text = body::read_small(body).await?;
    let spec = GuestSpec::from_json(&text).map_err(GuestError::Invalid)?;
    let info = blocking(move || -> Result<GuestInfo, ApiError> {
        let g = s.guests.add(spec)?;
        let running = s.guests.running().into_iter().find(|r| r.id() == g.id);
        Ok(s.guests.info(&g, running.as_deref(), 0))
    })
    .await??;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// `force` of `DELETE /v1/guests/{name}?force=true`: absent is false;
/// anything but `force=true` or `force=false` is refused.
fn force_param(query: Option<&str>) -> Result<bool, ApiError> {
    match query.unwrap_or("") {
        "" | "force=false" => Ok(false),
        "force=true" => Ok(true),
        other => Err(ApiError::bad_field(
            "force",
            format!(
                "Field `force`: {} is not a query this route takes; use force=true or force=false.",
                echo(other)
            ),
        )),
    }
}

async fn delete_guest<P: Platform>(
    State(s): State<Arc<ControlState<P>>>,
    Path(name): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult {
    let force = force_param(query.as_deref())?;
    blocking(move || s.guests.remove(&name, force)).await??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl From<GuestError> for ApiError {
    fn from(e: GuestError) -> Self {
        Self {
            status: StatusCode::from_u16(e.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: e.error_body(),
        }
    }
}

impl From<GuestSetError> for ApiError {
    fn from(e: GuestSetError) -> Self {
        match e {
            GuestSetError::Guest(e) => e.into(),
            GuestSetError::Table(e) => e.into(),
            GuestSetError::Start(e) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e}: {}", source_text(&e)),
            ),
            e @ GuestSetError::RemovedNotSaved { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

/// The causes of `e`, joined.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    parts.join(": ")
}

/// The API's form of the pool's socket state.
fn socket_state(s: socket_pool::SocketState) -> SocketState {
    match s {
        socket_pool::SocketState::Bound => SocketState::Bound,
        socket_pool::SocketState::Replacing => SocketState::Replacing,
        socket_pool::SocketState::Released => SocketState::Released,
        socket_pool::SocketState::Failed(why) => SocketState::Failed(why),
    }
}

async fn queues<P: Platform>(State(s): State<Arc<ControlState<P>>>) -> Json<Vec<QueueStatus>> {
    let mut out = Vec::new();
    for g in s.guests.running() {
        let counters = g.server().all_counters();
        out.extend(g.pool().list().into_iter().map(|q| QueueStatus {
            guest: g.name().to_string(),
            counters: counters.get(q.queue as usize).copied(),
            queue: q.queue,
            socket: socket_state(q.state),
            socket_generation: q.generation,
        }));
    }
    Json(out)
}

/// Replaces queue `queue`'s socket of every running guest, one after the
/// other (the others' traffic on the queue is not disturbed); answers with
/// the first guest's.
async fn replace_queue<P: Platform>(
    State(s): State<Arc<ControlState<P>>>,
    Path(raw): Path<String>,
) -> ApiResult {
    let queue: u32 = raw.parse().map_err(|_| {
        ApiError::bad_field(
            "queue",
            format!("Field `queue`: {} is not a queue index.", echo(&raw)),
        )
    })?;
    let info = blocking(move || -> Result<_, ApiError> {
        let mut first = None;
        for g in s.guests.running() {
            let info = g.pool().replace(queue, &s.tables, g.server())?;
            first.get_or_insert(info);
        }
        first.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("Queue {queue} has no socket: no guest runs."),
            )
        })
    })
    .await??;
    Ok(Json(QueueSocket {
        queue: info.queue,
        state: socket_state(info.state),
        generation: info.generation,
    })
    .into_response())
}

async fn classifier_counters<P: Platform>(
    s: Arc<ControlState<P>>,
) -> Result<ClassifierCounters, ApiError> {
    blocking(move || {
        s.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .classifier
            .counters()
    })
    .await?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Every running guest's queue pairs' counters, by guest name.
fn guest_queues<P: Platform>(s: &ControlState<P>) -> Vec<(String, Vec<QueueCounterValues>, bool)> {
    s.guests
        .running()
        .iter()
        .map(|g| {
            (
                g.name().to_string(),
                g.server().all_counters(),
                g.server().connected(),
            )
        })
        .collect()
}

async fn stats<P: Platform>(State(s): State<Arc<ControlState<P>>>) -> ApiResult {
    let classifier = classifier_counters::<P>(s.clone()).await?;
    let queues = guest_queues(&s)
        .into_iter()
        .flat_map(|(guest, snaps, _)| {
            (0u32..)
                .zip(snaps)
                .map(move |(queue, counters)| QueueStats {
                    guest: guest.clone(),
                    queue,
                    counters,
                })
        })
        .collect();
    Ok(Json(Stats { classifier, queues }).into_response())
}

async fn metrics<P: Platform>(State(s): State<Arc<ControlState<P>>>) -> ApiResult {
    let c = classifier_counters::<P>(s.clone()).await?;
    let flood = s.flood.get().map(|f| {
        use std::sync::atomic::Ordering::Relaxed;
        [
            ("frames", f.frames.load(Relaxed)),
            ("copies", f.copies.load(Relaxed)),
            ("dropped_rate", f.dropped_rate.load(Relaxed)),
            ("dropped_guest", f.dropped_guest.load(Relaxed)),
            ("dropped_oversize", f.dropped_oversize.load(Relaxed)),
        ]
    });
    let text = metrics_text(Scrape {
        iface: s.cfg.iface.clone(),
        classifier: c,
        guests: guest_queues(&s),
        flood,
        api_slow_heads_closed: s.api_stats.slow_heads_closed(),
    })
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        text,
    )
        .into_response())
}

/// One scrape: the snapshots `/metrics` shows, read once.
#[derive(Debug)]
pub struct Scrape {
    /// The interface (label `iface`).
    pub iface: String,
    /// The classifier's counters.
    pub classifier: ClassifierCounters,
    /// Per running guest (label `guest`): its queue pairs' counters (label
    /// `queue` = index) and whether its frontend is connected.
    pub guests: Vec<(String, Vec<QueueCounterValues>, bool)>,
    /// The wire's broadcast slow path's counters, once it runs.
    pub flood: Option<[(&'static str, u64); 5]>,
    /// API connections closed for sending no full request head in time
    /// while another waited for their slot.
    pub api_slow_heads_closed: u64,
}

/// A `prometheus-client` collector over one [`Scrape`]: every counter of
/// the snapshot, under the names of its definition.
#[derive(Debug)]
struct ScrapeCollector(Scrape);

impl Collector for ScrapeCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let iface = [("iface", s.iface.as_str())];
        for (name, v) in s.classifier.fields() {
            let family = format!("xdpath_classifier_{name}");
            let help = format!("Classifier counter {name} (summed over CPUs).");
            let mut m = enc.encode_descriptor(&family, &help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(m.encode_family(&iface)?)?;
        }
        if s.guests.iter().any(|(_, q, _)| !q.is_empty()) {
            for (i, name) in QueueCounterValues::NAMES.iter().enumerate() {
                let family = format!("xdpath_queue_{name}");
                let help = QueueCounterValues::DOCS.get(i).map(|d| d.join(" "));
                let help = help.as_deref().unwrap_or(name);
                let mut m = enc.encode_descriptor(&family, help, None, MetricType::Counter)?;
                for (guest, queues, _) in &s.guests {
                    for (q, snap) in queues.iter().enumerate() {
                        let v = snap.fields().get(i).map_or(0, |f| f.1);
                        let queue = q.to_string();
                        let labels = [
                            ("iface", s.iface.as_str()),
                            ("guest", guest.as_str()),
                            ("queue", queue.as_str()),
                        ];
                        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "xdpath_guest_connected",
            "1 while the guest's vhost-user frontend is connected.",
            None,
            MetricType::Gauge,
        )?;
        for (guest, _, connected) in &s.guests {
            let labels = [("iface", s.iface.as_str()), ("guest", guest.as_str())];
            ConstGauge::new(i64::from(*connected)).encode(m.encode_family(&labels)?)?;
        }
        if let Some(flood) = &s.flood {
            for (name, v) in flood {
                let family = format!("xdpath_wire_flood_{name}");
                let help = format!(
                    "Wire broadcast and multicast copied to the guests (slow path): {name}."
                );
                let mut m = enc.encode_descriptor(&family, &help, None, MetricType::Counter)?;
                ConstCounter::new(*v).encode(m.encode_family(&iface)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "xdpath_api_slow_clients_closed",
            "API connections closed because they sent no full request head within 2 s while \
             another connection waited for a slot.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.api_slow_heads_closed).encode(m.encode_family(&iface)?)?;
        Ok(())
    }
}

/// The OpenMetrics text of one scrape.
pub fn metrics_text(s: Scrape) -> Result<String, String> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(ScrapeCollector(s)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .map_err(|e| format!("Encoding the metrics failed: {e}."))?;
    Ok(out)
}

/// The concrete path of a documented path (`{id}` -> 1, `{queue}` -> 0).
fn concrete(path: &str) -> String {
    path.replace("{id}", "1")
        .replace("{queue}", "0")
        .replace("{name}", "default")
}

/// One request through `router`: the status and the body as text.
async fn send(
    router: &Router,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .map_err(|e| format!("{method} {path}: cannot build the request: {e}"))?;
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Drives `router` with the requests `doc` (an OpenAPI document such as
/// `control/openapi.json`) describes and returns every disagreement (none:
/// they agree):
///
/// - every documented operation is served: neither 405 nor the fallback's
///   404; its request body is the documented example (or `{}`);
/// - a documented success status comes with a body that fits the
///   documented schema (bodies of other statuses are not checked, so a
///   router with fake state can be checked too);
/// - every other method on a documented path answers 405;
/// - a few undocumented paths reach the fallback.
pub async fn check_router(router: Router, doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return vec!["the document has no paths".into()];
    };
    let fallback =
        |text: &str| serde_json::from_str::<ErrorBody>(text).is_ok_and(|b| b.error == NO_SUCH_PATH);
    for (path, item) in paths {
        let ops = item.as_object().cloned().unwrap_or_default();
        let uri = concrete(path);
        for method in ["get", "post", "put", "delete", "patch"] {
            let upper = method.to_uppercase();
            let Some(op) = ops.get(method) else {
                match send(&router, &upper, &uri, None).await {
                    Ok((405, _)) => {}
                    Ok((status, text)) => problems.push(format!(
                        "{upper} {path} is not documented but answers {status}: {text}"
                    )),
                    Err(e) => problems.push(e),
                }
                continue;
            };
            let body = op.get("requestBody").map(|rb| {
                rb.pointer("/content/application~1json/example")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({}))
            });
            let (status, text) = match send(&router, &upper, &uri, body.as_ref()).await {
                Ok(r) => r,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            if status == 405 || (status == 404 && fallback(&text)) {
                problems.push(format!(
                    "{upper} {path} is documented but not served: {status} {text}"
                ));
                continue;
            }
            let documented = op
                .get("responses")
                .and_then(|r| r.get(status.to_string()))
                .and_then(|r| r.pointer("/content/application~1json/schema"));
            if let (Some(schema), Ok(v)) = (documented, serde_json::from_str::<Value>(&text)) {
                for p in xdpath_api::openapi::validate(doc, schema, &v) {
                    problems.push(format!("{upper} {path} answers {status} with {p}"));
                }
            }
        }
    }
    for p in ["/v1/nothing", "/v2/health", "/"] {
        match send(&router, "GET", p, None).await {
            Ok((404, text)) if fallback(&text) => {}
            Ok((status, text)) => problems.push(format!(
                "GET {p} is not documented but answers {status}: {text}"
            )),
            Err(e) => problems.push(e),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::GuestRef;
    use crate::rules::{flow_specs_from_json, prefix_specs_from_json};
    use xdpath_api::openapi::{document, document_text, response_schema, validate};
    use xdpath_api::{MacAddr, XdpAttachMode};

    const COMMITTED: &str = include_str!("../openapi.json");

    /// The committed document is the generated one. `XDPATH_BLESS=1 cargo
    /// test -p xdpath-control openapi` rewrites it after a deliberate
    /// change.
    #[test]
    fn the_committed_openapi_document_is_generated_from_the_types() {
        let generated = document_text();
        if std::env::var_os("XDPATH_BLESS").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
            std::fs::write(path, &generated).expect("write control/openapi.json");
            return;
        }
        assert!(
            COMMITTED == generated,
            "control/openapi.json is not what the types and the route table generate; \
             run `XDPATH_BLESS=1 cargo test -p xdpath-control openapi` and review the diff"
        );
    }

    #[test]
    fn every_endpoint_is_documented_and_nothing_else() {
        let doc = document();
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.clone(), p.clone()))
            })
            .collect();
        let mut routes: Vec<(String, String)> = Endpoint::ALL
            .iter()
            .map(|e| (e.method().openapi_key().to_string(), e.path().to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
        // Every route of the old hand-written document is still there.
        for (m, p) in [
            ("get", "/v1/health"),
            ("get", "/v1/flows"),
            ("post", "/v1/flows"),
            ("put", "/v1/flows"),
            ("delete", "/v1/flows/{id}"),
            ("get", "/v1/prefixes"),
            ("post", "/v1/prefixes"),
            ("put", "/v1/prefixes"),
            ("delete", "/v1/prefixes/{id}"),
            ("get", "/v1/guests"),
            ("get", "/v1/queues"),
            ("post", "/v1/queues/{queue}/replace"),
            ("get", "/v1/stats"),
            ("get", "/metrics"),
        ] {
            assert!(doc["paths"][p][m].is_object(), "{m} {p}");
        }
    }

    /// A router with stand-in handlers (the daemon's need a classifier).
    fn stand_in(skip: Option<Endpoint>) -> Router {
        build(move |e| {
            if Some(e) == skip {
                MethodRouter::new()
            } else {
                on(method_filter(e.method()), || async { StatusCode::OK })
            }
        })
    }

    #[tokio::test]
    async fn the_route_check_passes_for_the_table_and_fails_for_a_missing_route() {
        let doc = document();
        assert_eq!(
            check_router(stand_in(None), &doc).await,
            Vec::<String>::new()
        );
        let problems = check_router(stand_in(Some(Endpoint::ReplaceQueue)), &doc).await;
        assert!(
            problems
                .iter()
                .any(|p| p.contains("POST /v1/queues/{queue}/replace is documented but not served")),
            "{problems:?}"
        );
        // An answer that does not fit the documented schema is reported.
        let wrong = build(|e| {
            on(method_filter(e.method()), move || async move {
                match e {
                    Endpoint::Health => Json(serde_json::json!({"status": "ok"})).into_response(),
                    _ => StatusCode::OK.into_response(),
                }
            })
        });
        let problems = check_router(wrong, &doc).await;
        assert!(
            problems
                .iter()
                .any(|p| p.contains("GET /v1/health") && p.contains("`version` is missing")),
            "{problems:?}"
        );
    }

    fn snapshot(seed: u64) -> QueueCounterValues {
        let c = xdpath_common::counters::QueueCounters::default();
        c.add(&xdpath_common::counters::Tally {
            rx_frames: seed,
            tx_bytes: seed * 3,
            xdp_tx_ring_empty: seed + 1,
            ..Default::default()
        });
        c.snapshot()
    }

    /// Every answer the daemon builds, serialized as it serializes it, fits
    /// the schema the document gives for it: a field renamed, added or
    /// dropped on either side fails here.
    #[test]
    fn documented_answers_fit_the_types() {
        let doc = document();
        let check = |e: Endpoint, v: Value| {
            let schema = response_schema(&doc, e).unwrap_or_else(|| panic!("{e:?} has a schema"));
            let problems = validate(&doc, schema, &v);
            assert!(problems.is_empty(), "{e:?}: {problems:?} in {v}");
        };
        let health = Health {
            status: "ok".into(),
            version: "0.1.0".into(),
            iface: "eth1".into(),
            xdp_prog_id: 42,
            xdp_mode: XdpAttachMode::Generic,
            queues: 2,
            guest_connected: true,
            connections: 3,
            uptime_s: 9,
        };
        check(Endpoint::Health, serde_json::to_value(&health).unwrap());
        let flow = FlowRuleSpec {
            id: None,
            src: "10.0.0.2".into(),
            dst: "10.0.0.1".into(),
            proto: "udp".into(),
            src_port: 1000,
            dst_port: 53,
            action: "guest".into(),
            guest: Some(GuestRef::Id(2)),
        }
        .validate(7, &crate::rules::LegacyIds)
        .unwrap();
        let icmp: FlowRule = FlowRuleSpec::new("fd00::2", "fd00::1", 200u8, "drop")
            .validate(8, &crate::rules::LegacyIds)
            .unwrap();
        check(Endpoint::AddFlow, serde_json::to_value(flow).unwrap());
        check(
            Endpoint::ListFlows,
            serde_json::to_value([flow, icmp]).unwrap(),
        );
        let prefix: PrefixRule = PrefixRuleSpec::new("fd00:88::/32", "host")
            .validate(3, &crate::rules::LegacyIds)
            .unwrap();
        check(
            Endpoint::ListPrefixes,
            serde_json::to_value([prefix]).unwrap(),
        );
        for e in [Endpoint::ReplaceFlows, Endpoint::ReplacePrefixes] {
            check(
                e,
                serde_json::to_value(Replaced {
                    count: 1 << 20,
                    generation: 1,
                })
                .unwrap(),
            );
        }
        let mut spec = xdpath_api::GuestSpec::new("web1", MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 2]));
        spec.ips = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let g = xdpath_api::GuestInfo::new(
            1,
            &spec,
            "/run/xdpath/eth1.web1.vhost.sock".into(),
            2,
            0o660,
        );
        check(Endpoint::ListGuests, serde_json::to_value([&g]).unwrap());
        check(Endpoint::AddGuest, serde_json::to_value(&g).unwrap());
        check(Endpoint::GetGuest, serde_json::to_value(&g).unwrap());
        let queues = [
            QueueStatus {
                guest: "default".into(),
                queue: 0,
                socket: SocketState::Bound,
                socket_generation: 1,
                counters: Some(snapshot(5)),
            },
            QueueStatus {
                guest: "web1".into(),
                queue: 1,
                socket: SocketState::Failed("binding failed".into()),
                socket_generation: 2,
                counters: None,
            },
        ];
        check(Endpoint::Queues, serde_json::to_value(queues).unwrap());
        check(
            Endpoint::ReplaceQueue,
            serde_json::to_value(QueueSocket {
                queue: 1,
                state: SocketState::Released,
                generation: 3,
            })
            .unwrap(),
        );
        let stats = Stats {
            classifier: ClassifierCounters {
                frames: 10,
                redirects: 4,
                ..Default::default()
            },
            queues: (0u32..)
                .zip([snapshot(1), snapshot(2)])
                .map(|(queue, counters)| QueueStats {
                    guest: "default".into(),
                    queue,
                    counters,
                })
                .collect(),
        };
        let v = serde_json::to_value(&stats).unwrap();
        assert_eq!(v["queues"][1]["queue"], 1);
        assert_eq!(v["queues"][1]["tx_bytes"], 6);
        assert_eq!(v["classifier"]["redirects"], 4);
        check(Endpoint::Stats, v);
        // The error body, through the shared response.
        let err = serde_json::to_value(ErrorBody {
            error: "Field `dst`: bad.".into(),
            field: Some("dst".into()),
        })
        .unwrap();
        let schema =
            &doc["components"]["responses"]["Error"]["content"]["application/json"]["schema"];
        assert!(validate(&doc, schema, &err).is_empty());
        // And the check itself can fail.
        let mut h = serde_json::to_value(&health).unwrap();
        h["colour"] = "red".into();
        h["queues"] = "two".into();
        let problems = validate(&doc, response_schema(&doc, Endpoint::Health).unwrap(), &h);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn request_examples_fit_their_schemas_and_the_daemon_reads_them() {
        let doc = document();
        let mut seen = 0;
        for e in Endpoint::ALL {
            let Some(media) = doc["paths"][e.path()][e.method().openapi_key()]
                .pointer("/requestBody/content/application~1json")
            else {
                continue;
            };
            let problems = validate(&doc, &media["schema"], &media["example"]);
            assert!(problems.is_empty(), "{e:?}: {problems:?}");
            let text = media["example"].to_string();
            let read = match e {
                Endpoint::AddFlow => FlowRuleSpec::from_json(text.as_bytes()).map(|_| ()),
                Endpoint::ReplaceFlows => flow_specs_from_json(text.as_bytes()).map(|_| ()),
                Endpoint::AddPrefix => PrefixRuleSpec::from_json(text.as_bytes()).map(|_| ()),
                Endpoint::ReplacePrefixes => prefix_specs_from_json(text.as_bytes()).map(|_| ()),
                Endpoint::AddGuest => {
                    let g = xdpath_api::GuestSpec::from_json(text.as_bytes());
                    assert!(g.as_ref().is_ok_and(|g| g.validate().is_ok()), "{g:?}");
                    Ok(())
                }
                other => panic!("{other:?} has a request body this test does not know"),
            };
            assert!(read.is_ok(), "{e:?}: {read:?}");
            seen += 1;
        }
        assert_eq!(seen, 5);
    }

    #[test]
    fn metrics_keep_their_names_and_escape_labels() {
        let text = metrics_text(Scrape {
            iface: "we\"ird\\if\n".into(),
            classifier: ClassifierCounters {
                frames: 7,
                ..Default::default()
            },
            guests: vec![("web1".into(), vec![snapshot(3), snapshot(4)], true)],
            flood: None,
            api_slow_heads_closed: 2,
        })
        .unwrap();
        let lab = r#"iface="we\"ird\\if\n""#;
        for want in [
            format!("xdpath_classifier_frames_total{{{lab}}} 7\n"),
            format!("xdpath_classifier_meta_errors_total{{{lab}}} 0\n"),
            "# TYPE xdpath_classifier_frames counter\n".to_string(),
            format!("xdpath_queue_rx_frames_total{{{lab},guest=\"web1\",queue=\"0\"}} 3\n"),
            format!("xdpath_queue_rx_frames_total{{{lab},guest=\"web1\",queue=\"1\"}} 4\n"),
            format!("xdpath_queue_tx_bytes_total{{{lab},guest=\"web1\",queue=\"1\"}} 12\n"),
            format!("xdpath_queue_xdp_tx_ring_empty_total{{{lab},guest=\"web1\",queue=\"0\"}} 4\n"),
            "# HELP xdpath_queue_rx_frames Frames delivered to the guest (wire -> guest).\n"
                .to_string(),
            "# TYPE xdpath_guest_connected gauge\n".to_string(),
            format!("xdpath_guest_connected{{{lab},guest=\"web1\"}} 1\n"),
            format!("xdpath_api_slow_clients_closed_total{{{lab}}} 2\n"),
        ] {
            assert!(text.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Every counter of both definitions is exported, once per queue.
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(
            samples,
            ClassifierCounters::NAMES.len() + 2 * QueueCounterValues::NAMES.len() + 2
        );
        // No queues: no queue families at all.
        let text = metrics_text(Scrape {
            iface: "eth1".into(),
            classifier: ClassifierCounters::default(),
            guests: vec![],
            flood: Some([
                ("frames", 3),
                ("copies", 6),
                ("dropped_rate", 0),
                ("dropped_guest", 1),
                ("dropped_oversize", 0),
            ]),
            api_slow_heads_closed: 0,
        })
        .unwrap();
        assert!(!text.contains("xdpath_queue_"), "{text}");
        assert!(
            !text.contains("xdpath_guest_connected{"),
            "no guest, no sample: {text}"
        );
        assert!(
            text.contains("xdpath_wire_flood_copies_total{iface=\"eth1\"} 6\n"),
            "{text}"
        );
    }
}
