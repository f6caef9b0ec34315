//! The OpenAPI document, generated: paths from [`Endpoint::ALL`], schemas
//! from the request and response types (schemars, JSON Schema 2020-12 as
//! OpenAPI 3.1 uses it). `control/openapi.json` is this document as
//! committed; a test of `xdpath-control` fails when they differ and
//! rewrites the file when `XDPATH_BLESS=1` is set.
//!
//! [`validate`] checks a JSON value against a schema of the document (the
//! keywords the generator emits), so tests can hold real answers to what
//! the document promises.

use crate::guests::{GuestInfo, GuestSpec};
use crate::rules::{FlowRuleSpec, PrefixRuleSpec};
use crate::types::{ErrorBody, Health, QueueSocket, QueueStatus, Replaced, Stats};
use crate::{ClassifierCounters, Endpoint, QueueCounterValues};
use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// The media type of `/metrics` (OpenMetrics text).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The schema of the classifier's counter block: one integer per name of
/// `xdpath_common::Counters`.
pub struct ClassifierCountersSchema;

impl JsonSchema for ClassifierCountersSchema {
    fn schema_name() -> Cow<'static, str> {
        "ClassifierCounters".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        counters_schema(
            "The classifier's counters, summed over CPUs (xdpath_common::Counters).",
            ClassifierCounters::NAMES.iter().map(|n| (*n, None)),
        )
    }
}

/// The schema of one queue pair's counter block: one integer per counter
/// of `xdpath_common::counters`, described by its documentation.
pub struct QueueCountersSchema;

impl JsonSchema for QueueCountersSchema {
    fn schema_name() -> Cow<'static, str> {
        "QueueCounters".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        counters_schema(
            "One queue pair's counters (xdpath_common::counters).",
            QueueCounterValues::NAMES
                .iter()
                .zip(QueueCounterValues::DOCS)
                .map(|(n, d)| (*n, Some(d.join(" ")))),
        )
    }
}

fn counters_schema<'a>(
    what: &str,
    fields: impl Iterator<Item = (&'a str, Option<String>)>,
) -> Schema {
    let mut props = Map::new();
    let mut required = Vec::new();
    for (name, doc) in fields {
        let mut p = json!({ "type": "integer", "format": "uint64", "minimum": 0 });
        if let Some(d) = doc {
            p["description"] = json!(d);
        }
        props.insert(name.to_string(), p);
        required.push(json!(name));
    }
    json_schema!({
        "type": "object",
        "description": what,
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

/// What an endpoint takes and answers.
struct Contract {
    /// The request body's schema and an example.
    request: Option<(Schema, Value)>,
    /// What the request body may hold (its caps).
    request_note: &'static str,
    /// Status, description, and the body's schema if it has one.
    ok: (u16, &'static str, Option<Schema>),
    /// Statuses answered with the error body.
    errors: &'static [u16],
}

/// What each endpoint takes and answers (an exhaustive match, so a new
/// endpoint cannot be left undocumented).
fn contract(e: Endpoint, g: &mut SchemaGenerator) -> Contract {
    // 408: the body stalled; 413: the body is over the route's cap (or a
    // bulk list over the rule cap); 507: the table is full.
    const WRITE: &[u16] = &[400, 408, 409, 413, 500, 507];
    let flow = || json!({"src": "10.0.0.2", "dst": "10.0.0.1", "proto": "udp", "src_port": 1000, "dst_port": 53, "action": "guest", "guest": 1});
    let prefix = || json!({"prefix": "10.88.0.0/16", "action": "drop"});
    let guest =
        || json!({"name": "web1", "mac": "52:54:00:12:34:56", "ips": ["10.0.0.5"], "queues": 2});
    const ONE: &str = "One rule, at most 64 KiB (413 otherwise). When the table already holds max_flows (max_prefixes) rules: 507.";
    const DELETE: &[u16] = &[400, 404, 500];
    match e {
        Endpoint::Health => Contract {
            request: None,
            request_note: "",
            ok: (200, "status, version, iface, XDP program and mode, queues, guest connection, uptime", Some(g.subschema_for::<Health>())),
            errors: &[],
        },
        Endpoint::ListFlows => Contract {
            request: None,
            request_note: "",
            ok: (200, "the rules, by id", Some(g.subschema_for::<Vec<FlowRuleSpec>>())),
            errors: &[500],
        },
        Endpoint::AddFlow => Contract {
            request: Some((g.subschema_for::<FlowRuleSpec>(), flow())),
            request_note: ONE,
            ok: (201, "the rule as stored", Some(g.subschema_for::<FlowRuleSpec>())),
            errors: WRITE,
        },
        Endpoint::ReplaceFlows => Contract {
            request: Some((g.subschema_for::<Vec<FlowRuleSpec>>(), json!([flow()]))),
            request_note: "All exact rules: a JSON array, read as it arrives. At most 256 MiB (413 before it is read when Content-Length says more) and at most max_flows rules (default 1048576; 413 naming the field `rules` and the cap). 409 when a guest a rule names was removed while the list was read: nothing changed, send it again.",
            ok: (200, "how many exact rules are in place, and the rule generation the classifier now reads (GET /v1/flows lists them)", Some(g.subschema_for::<Replaced>())),
            errors: WRITE,
        },
        Endpoint::DeleteFlow | Endpoint::DeletePrefix => Contract {
            request: None,
            request_note: "",
            ok: (204, "deleted", None),
            errors: DELETE,
        },
        Endpoint::ListPrefixes => Contract {
            request: None,
            request_note: "",
            ok: (200, "the rules, by id", Some(g.subschema_for::<Vec<PrefixRuleSpec>>())),
            errors: &[500],
        },
        Endpoint::AddPrefix => Contract {
            request: Some((g.subschema_for::<PrefixRuleSpec>(), prefix())),
            request_note: ONE,
            ok: (201, "the rule as stored", Some(g.subschema_for::<PrefixRuleSpec>())),
            errors: WRITE,
        },
        Endpoint::ReplacePrefixes => Contract {
            request: Some((g.subschema_for::<Vec<PrefixRuleSpec>>(), json!([prefix()]))),
            request_note: "All prefix rules: a JSON array, read as it arrives. At most 16 MiB (413 before it is read when Content-Length says more) and at most max_prefixes rules (default 65536; 413 naming the field `rules` and the cap). 409 when a guest a rule names was removed while the list was read: nothing changed, send it again.",
            ok: (200, "how many prefix rules are in place, and the rule generation the classifier now reads (GET /v1/prefixes lists them)", Some(g.subschema_for::<Replaced>())),
            errors: WRITE,
        },
        Endpoint::ListGuests => Contract {
            request: None,
            request_note: "",
            ok: (200, "the guests, by id", Some(g.subschema_for::<Vec<GuestInfo>>())),
            errors: &[500],
        },
        Endpoint::AddGuest => Contract {
            request: Some((g.subschema_for::<GuestSpec>(), guest())),
            request_note: "One guest, at most 64 KiB. 400 names the field at fault; 409 names the field (name, mac, vhost_socket, ips) and the guest that already has that value; 507 when 64 guests exist.",
            ok: (201, "the guest as added, with its id", Some(g.subschema_for::<GuestInfo>())),
            errors: &[400, 408, 409, 413, 500, 507],
        },
        Endpoint::GetGuest => Contract {
            request: None,
            request_note: "",
            ok: (200, "the guest", Some(g.subschema_for::<GuestInfo>())),
            errors: &[400, 404],
        },
        Endpoint::DeleteGuest => Contract {
            request: None,
            request_note: "",
            ok: (204, "removed (with force=true, together with the rules that sent to it)", None),
            errors: &[400, 404, 409, 500],
        },
        Endpoint::Queues => Contract {
            request: None,
            request_note: "",
            ok: (200, "the queues", Some(g.subschema_for::<Vec<QueueStatus>>())),
            errors: &[],
        },
        Endpoint::ReplaceQueue => Contract {
            request: None,
            request_note: "",
            ok: (200, "the queue after the replacement", Some(g.subschema_for::<QueueSocket>())),
            errors: &[400, 404, 409, 500],
        },
        Endpoint::Stats => Contract {
            request: None,
            request_note: "",
            ok: (200, "every counter", Some(g.subschema_for::<Stats>())),
            errors: &[500],
        },
        Endpoint::Metrics => Contract {
            request: None,
            request_note: "",
            ok: (200, "OpenMetrics text: xdpath_classifier_<counter>_total{iface}, xdpath_queue_<counter>_total{iface,queue}, xdpath_guest_connected{iface}, xdpath_api_slow_clients_closed_total{iface}", None),
            errors: &[500],
        },
    }
}

/// The schema of `{name}` in a path.
fn param_schema(name: &str) -> Value {
    match name {
        "id" => json!({ "type": "integer", "minimum": 1, "maximum": u32::MAX }),
        "name" => json!({ "type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,14}$" }),
        _ => json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX }),
    }
}

/// The API's OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let error_ref = g.subschema_for::<ErrorBody>();
    let mut paths = Map::new();
    for e in Endpoint::ALL {
        let c = contract(e, &mut g);
        let mut op = Map::new();
        op.insert("summary".into(), json!(e.summary()));
        let mut params = Vec::new();
        if let Some(p) = e.param() {
            params.push(
                json!({ "name": p, "in": "path", "required": true, "schema": param_schema(p) }),
            );
        }
        if e == Endpoint::DeleteGuest {
            params.push(json!({ "name": "force", "in": "query", "required": false, "description": "true: also delete the rules that send to the guest, in the same step", "schema": { "type": "boolean", "default": false } }));
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some((schema, example)) = c.request {
            op.insert(
                "requestBody".into(),
                json!({ "description": c.request_note, "required": true, "content": { "application/json": { "schema": schema, "example": example } } }),
            );
        }
        let mut responses = Map::new();
        let (status, description, body) = c.ok;
        let mut ok = json!({ "description": description });
        match (e, body) {
            (_, Some(schema)) => {
                ok["content"] = json!({ "application/json": { "schema": schema } });
            }
            (Endpoint::Metrics, None) => {
                ok["content"] =
                    json!({ "application/openmetrics-text": { "schema": { "type": "string" } } });
            }
            (_, None) => {}
        }
        responses.insert(status.to_string(), ok);
        for s in c.errors {
            responses.insert(
                s.to_string(),
                json!({ "$ref": "#/components/responses/Error" }),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        let item = paths
            .entry(e.path().to_string())
            .or_insert_with(|| json!({}));
        item[e.method().openapi_key()] = Value::Object(op);
    }
    let schemas = g.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "xdpathd API",
            "version": "1",
            "description": "HTTP/JSON on the daemon's Unix socket (mode 0660, owner root, group per api_group), one request per connection. Errors are {\"error\": message, \"field\": name?}: 400 bad input (the message names the field), 404 unknown id or path, 405 method not allowed, 408 the request body stalled (10 s without data) or took over 60 s, 409 duplicate or conflict, 413 body over its route's cap (64 KiB; a bulk replace 256 bytes per rule the maps hold) or a bulk list over the rule cap (max_flows, max_prefixes), 507 table full, 500 internal. At most 64 connections are served at once; one more waits until a slot frees (the oldest connection still sending its request head after 2 s gives its slot). A request head must arrive within 10 s. A rejected write changes nothing; messages repeat at most 64 characters of a value they were given. Generated from the types of the xdpath-api crate; do not edit by hand."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": {
                    "description": "the request was refused and changed nothing",
                    "content": { "application/json": { "schema": error_ref } }
                }
            }
        }
    })
}

/// The document as committed: pretty JSON with a final newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}

/// The schema of the body `endpoint` answers with on success, if any.
pub fn response_schema(doc: &Value, e: Endpoint) -> Option<&Value> {
    let op = doc
        .get("paths")?
        .get(e.path())?
        .get(e.method().openapi_key())?;
    let responses = op.get("responses")?.as_object()?;
    responses
        .iter()
        .find(|(s, _)| s.starts_with('2'))
        .and_then(|(_, r)| r.get("content")?.get("application/json")?.get("schema"))
}

/// Checks `value` against `schema` (resolving `$ref`s in `doc`); returns
/// every disagreement, each with its JSON path. Handles the keywords the
/// generator emits: `$ref`, `type`, `enum`, `const`, `properties`,
/// `required`, `additionalProperties`, `items`, `oneOf`, `anyOf`, `allOf`,
/// `minimum`, `maximum`.
pub fn validate(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(doc, schema, value, "$", &mut out, 0);
    out
}

fn check(doc: &Value, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>, depth: u32) {
    if depth > 64 {
        out.push(format!("{at}: schema nests too deep"));
        return;
    }
    let depth = depth + 1;
    let Some(s) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            out.push(format!("{at}: no value is allowed here"));
        }
        return;
    };
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        match r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
            Some(target) => check(doc, target, v, at, out, depth),
            None => out.push(format!("{at}: unresolved {r}")),
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| type_matches(t, v)) {
            out.push(format!("{at}: {v} is not of type {}", types.join(" or ")));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            out.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(e.clone())
            ));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            out.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let (Some(n), Some(min)) = (v.as_f64(), s.get("minimum").and_then(Value::as_f64)) {
        if n < min {
            out.push(format!("{at}: {v} is below {min}"));
        }
    }
    if let (Some(n), Some(max)) = (v.as_f64(), s.get("maximum").and_then(Value::as_f64)) {
        if n > max {
            out.push(format!("{at}: {v} is above {max}"));
        }
    }
    if let Some(o) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !o.contains_key(r) {
                    out.push(format!("{at}: required field `{r}` is missing"));
                }
            }
        }
        for (k, fv) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(doc, ps, fv, &format!("{at}.{k}"), out, depth),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        out.push(format!("{at}: field `{k}` is not documented"));
                    }
                    Some(ap @ Value::Object(_)) => {
                        check(doc, ap, fv, &format!("{at}.{k}"), out, depth);
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), s.get("items")) {
        for (i, x) in a.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{i}]"), out, depth);
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            check(doc, sub, v, at, out, depth);
        }
    }
    for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(alts) = s.get(key).and_then(Value::as_array) {
            let ok = alts
                .iter()
                .filter(|sub| validate_at(doc, sub, v, depth).is_empty())
                .count();
            if ok == 0 || (exactly_one && ok > 1) {
                out.push(format!("{at}: {v} matches {ok} of the {key} alternatives"));
            }
        }
    }
}

fn validate_at(doc: &Value, schema: &Value, v: &Value, depth: u32) -> Vec<String> {
    let mut out = Vec::new();
    check(doc, schema, v, "$", &mut out, depth);
    out
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64(),
        _ => false,
    }
}
