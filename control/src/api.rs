//! The daemon's HTTP/JSON API on a Unix socket.
//!
//! Versioned paths under `/v1`, described by `control/openapi.json` (a test
//! checks that every documented route is served and nothing else is):
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
//! | GET    | /v1/guests                  | the guest(s) and their vhost-user port|
//! | GET    | /v1/queues                  | queues, their sockets and counters    |
//! | POST   | /v1/queues/{queue}/replace  | replace a queue's AF_XDP socket       |
//! | GET    | /v1/stats                   | classifier and per-queue counters     |
//! | GET    | /metrics                    | Prometheus text format                |
//!
//! Errors are `{"error": "...", "field": "..."}` with 400 (bad input; the
//! message names the field), 404 (unknown id or route), 409 (duplicate or
//! conflict), 413/507 (capacity) or 500. A rejected write changes nothing.
//!
//! Shared state ([`ControlState`]): the classifier and the flow table in one
//! mutex (every map write goes through it; held only for map syscalls, on a
//! blocking thread), the socket pool (its own mutex, see `socket_pool`), and
//! the dataplane's handle (atomics).

use crate::classifier::Classifier;
use crate::config::DaemonConfig;
use crate::flow_table::{FlowTable, FlowTableError};
use crate::rules::{flow_specs_from_json, prefix_specs_from_json, FlowRuleSpec, PrefixRuleSpec};
use crate::socket_pool::{PoolError, SocketPool};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use xdpath_common::Counters;
use xdpath_dataplane::{ServerHandle, XskFactory, XskPort};

/// The maps' source of truth and their projection, behind one mutex.
pub struct Tables {
    /// The attached classifier (maps).
    pub classifier: Classifier,
    /// The flow table (exact and prefix rules).
    pub flows: FlowTable,
}

impl AsMut<Classifier> for Tables {
    fn as_mut(&mut self) -> &mut Classifier {
        &mut self.classifier
    }
}

/// Everything the handlers share.
pub struct ControlState {
    /// Classifier + flow table.
    pub tables: Mutex<Tables>,
    /// The socket pool.
    pub pool: SocketPool<XskFactory>,
    /// The dataplane.
    pub server: ServerHandle<XskPort>,
    /// The configuration the daemon runs with.
    pub cfg: DaemonConfig,
    /// When the daemon started.
    pub started: Instant,
    /// The XDP program's id.
    pub prog_id: u32,
}

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<FlowTableError> for ApiError {
    fn from(e: FlowTableError) -> Self {
        Self {
            status: StatusCode::from_u16(e.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            field: e.field().map(str::to_string),
            message: e.to_string(),
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

/// The router.
pub fn router(state: Arc<ControlState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route(
            "/v1/flows",
            get(list_flows).post(add_flow).put(replace_flows),
        )
        .route("/v1/flows/{id}", axum::routing::delete(delete_flow))
        .route(
            "/v1/prefixes",
            get(list_prefixes).post(add_prefix).put(replace_prefixes),
        )
        .route("/v1/prefixes/{id}", axum::routing::delete(delete_prefix))
        .route("/v1/guests", get(guests))
        .route("/v1/queues", get(queues))
        .route("/v1/queues/{queue}/replace", post(replace_queue))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "No such API path; see control/openapi.json.",
            )
        })
        // Bulk replaces of up to the table's capacity (a million exact
        // rules are about 110 MB of JSON) must fit; axum's default is 2 MB.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Largest request body the API accepts.
pub const MAX_BODY: usize = 256 << 20;

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

async fn health(State(s): State<Arc<ControlState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "iface": s.cfg.iface,
        "xdp_prog_id": s.prog_id,
        "xdp_mode": format!("{:?}", s.cfg.xdp_mode).to_lowercase(),
        "queues": s.cfg.queues,
        "guest_connected": s.server.connected(),
        "connections": s.server.connections(),
        "uptime_s": s.started.elapsed().as_secs(),
    }))
}

fn id_param(raw: &str, field: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("Field `{field}`: {raw:?} is not a rule id (1 to 4294967295)."),
            field: Some(field.to_string()),
        })
}

impl From<crate::rules::RuleError> for ApiError {
    fn from(e: crate::rules::RuleError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            field: Some(e.field().to_string()),
            message: e.to_string(),
        }
    }
}

macro_rules! table_routes {
    ($list:ident, $add:ident, $replace:ident, $delete:ident, $one:expr, $many:expr, $m_list:ident, $m_add:ident, $m_replace:ident, $m_delete:ident) => {
        async fn $list(State(s): State<Arc<ControlState>>) -> ApiResult {
            let rules = blocking(move || {
                s.tables
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .flows
                    .$m_list()
            })
            .await?;
            Ok(Json(rules).into_response())
        }

        async fn $add(State(s): State<Arc<ControlState>>, body: Bytes) -> ApiResult {
            let spec = $one(&body)?;
            let rule = blocking(move || {
                let mut t = s.tables.lock().unwrap_or_else(PoisonError::into_inner);
                let Tables { classifier, flows } = &mut *t;
                flows.$m_add(classifier, spec)
            })
            .await??;
            Ok((StatusCode::CREATED, Json(rule)).into_response())
        }

        async fn $replace(State(s): State<Arc<ControlState>>, body: Bytes) -> ApiResult {
            let specs = $many(&body)?;
            let rules = blocking(move || {
                let mut t = s.tables.lock().unwrap_or_else(PoisonError::into_inner);
                let Tables { classifier, flows } = &mut *t;
                flows.$m_replace(classifier, specs)
            })
            .await??;
            Ok(Json(rules).into_response())
        }

        async fn $delete(State(s): State<Arc<ControlState>>, Path(raw): Path<String>) -> ApiResult {
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
    FlowRuleSpec::from_json,
    flow_specs_from_json,
    flows,
    add_flow,
    replace_flows,
    delete_flow
);
table_routes!(
    list_prefixes,
    add_prefix,
    replace_prefixes,
    delete_prefix,
    PrefixRuleSpec::from_json,
    prefix_specs_from_json,
    prefixes,
    add_prefix,
    replace_prefixes,
    delete_prefix
);

async fn guests(State(s): State<Arc<ControlState>>) -> Json<Value> {
    let ips: Vec<String> = s.cfg.guest_ips().iter().map(ToString::to_string).collect();
    Json(json!([{
        "port": 1,
        "mac": s.cfg.guest_mac().map(mac_text),
        "ips": ips,
        "vhost_socket": s.cfg.vhost_socket(),
        "queue_pairs": s.cfg.queues,
        "mtu": s.cfg.mtu,
        "connected": s.server.connected(),
        "connections": s.server.connections(),
    }]))
}

fn object(fields: Vec<(&'static str, u64)>) -> Map<String, Value> {
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

async fn queues(State(s): State<Arc<ControlState>>) -> Json<Value> {
    let counters = s.server.all_counters();
    let list: Vec<Value> = s
        .pool
        .list()
        .into_iter()
        .map(|q| {
            let mut o = Map::new();
            o.insert("queue".into(), json!(q.queue));
            o.insert("socket".into(), json!(q.state));
            o.insert("socket_generation".into(), json!(q.generation));
            if let Some(c) = counters.get(q.queue as usize) {
                o.insert("counters".into(), Value::Object(object(c.fields())));
            }
            Value::Object(o)
        })
        .collect();
    Json(Value::Array(list))
}

async fn replace_queue(State(s): State<Arc<ControlState>>, Path(raw): Path<String>) -> ApiResult {
    let queue: u32 = raw.parse().map_err(|_| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("Field `queue`: {raw:?} is not a queue index."),
        field: Some("queue".into()),
    })?;
    let info = blocking(move || s.pool.replace(queue, &s.tables, &s.server)).await??;
    Ok(Json(info).into_response())
}

/// The classifier's counters as name/value pairs.
pub fn classifier_fields(c: &Counters) -> Vec<(&'static str, u64)> {
    vec![
        ("frames", c.frames),
        ("action_host", c.action_host),
        ("action_guest", c.action_guest),
        ("action_drop", c.action_drop),
        ("class_exact", c.class_exact),
        ("class_prefix", c.class_prefix),
        ("class_mac", c.class_mac),
        ("class_neigh", c.class_neigh),
        ("class_default", c.class_default),
        ("parse_errors", c.parse_errors),
        ("redirect_no_socket", c.redirect_no_socket),
        ("redirects", c.redirects),
        ("meta_errors", c.meta_errors),
    ]
}

async fn classifier_counters(s: Arc<ControlState>) -> Result<Counters, ApiError> {
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

async fn stats(State(s): State<Arc<ControlState>>) -> ApiResult {
    let c = classifier_counters(s.clone()).await?;
    let queues: Vec<Value> = s
        .server
        .all_counters()
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let mut o = object(q.fields());
            o.insert("queue".into(), json!(i));
            Value::Object(o)
        })
        .collect();
    Ok(
        Json(json!({ "classifier": object(classifier_fields(&c)), "queues": queues }))
            .into_response(),
    )
}

async fn metrics(State(s): State<Arc<ControlState>>) -> ApiResult {
    let c = classifier_counters(s.clone()).await?;
    let iface = &s.cfg.iface;
    let mut out = String::new();
    for (name, v) in classifier_fields(&c) {
        out.push_str(&format!(
            "# TYPE xdpath_classifier_{name}_total counter\nxdpath_classifier_{name}_total{{iface=\"{iface}\"}} {v}\n"
        ));
    }
    let queues = s.server.all_counters();
    if let Some(first) = queues.first() {
        for (idx, (name, _)) in first.fields().into_iter().enumerate() {
            out.push_str(&format!("# TYPE xdpath_queue_{name}_total counter\n"));
            for (q, snap) in queues.iter().enumerate() {
                let v = snap.fields().get(idx).map_or(0, |f| f.1);
                out.push_str(&format!(
                    "xdpath_queue_{name}_total{{iface=\"{iface}\",queue=\"{q}\"}} {v}\n"
                ));
            }
        }
    }
    out.push_str(&format!(
        "# TYPE xdpath_guest_connected gauge\nxdpath_guest_connected{{iface=\"{iface}\"}} {}\n",
        u8::from(s.server.connected())
    ));
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response())
}
