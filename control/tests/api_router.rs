//! The daemon's API through its router, without a socket and without root:
//! the real handlers on `ControlState<InMemory>` (fake maps, the real flow
//! table on a private state directory, the real socket pool and vhost-user
//! server over in-memory ports).
//!
//! - the OpenAPI document and the router agree: every documented operation
//!   is served and answers in its documented shape, nothing else is;
//! - what the handlers do reaches the maps, the pool and the counters; bad
//!   input changes nothing.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tower::ServiceExt;
use xdpath_common::Counters;
use xdpath_control::api::{check_router, router, ControlState, Tables};
use xdpath_control::config::DaemonConfig;
use xdpath_control::flow_table::FlowTable;
use xdpath_control::guests::{GuestSet, OnExit};
use xdpath_control::maps::{FakeContents, FakeMaps, Flows, RuleMaps};
use xdpath_control::platform::InMemory;
use xdpath_dataplane::{MemFactory, MemWire};

const QUEUES: u16 = 2;

/// A daemon's state in memory, its private directory removed on drop.
struct Rig {
    state: Arc<ControlState<InMemory>>,
    dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.state.guests.stop_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Rig {
    fn new() -> Self {
        Self::with("")
    }

    /// A rig whose configuration has `extra` (TOML lines) too.
    fn with(extra: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xdpath-api-router-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state directory");
        let cfg = DaemonConfig::from_toml(&format!(
            "iface = \"mem0\"\nqueues = {QUEUES}\nguest_mac = \"52:54:00:00:00:11\"\n\
             guest_ip = [\"10.0.0.11\"]\nstate_dir = {:?}\nvhost_socket = {:?}\n{extra}",
            dir.display().to_string(),
            dir.join("vhost.sock").display().to_string(),
        ))
        .expect("config");
        cfg.validate().expect("a valid config");

        let flows = FlowTable::load(&cfg.state_file()).expect("flow table");
        let tables = Arc::new(Mutex::new(Tables {
            classifier: FakeMaps::new(),
            flows,
        }));
        let factory = MemFactory::new(MemWire::new(u32::from(QUEUES)), 256, 256, 2048);
        let on_exit: OnExit = Arc::new(|name: &str, r| panic!("guest {name} ended: {r:?}"));
        let guests =
            GuestSet::<InMemory>::load(&cfg, factory, tables.clone(), on_exit).expect("guests");
        guests.start_all().expect("guests start");
        let state = Arc::new(ControlState::<InMemory> {
            tables,
            guests,
            flood: Default::default(),
            cfg,
            started: Instant::now(),
            prog_id: 7,
            api_stats: Default::default(),
        });
        Self { state, dir }
    }

    fn router(&self) -> Router {
        router(self.state.clone())
    }

    fn maps<T>(&self, f: impl FnOnce(&mut FakeMaps) -> T) -> T {
        f(&mut self.state.tables.lock().expect("tables").classifier)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(
            method,
            path,
            body.map_or_else(Body::empty, |b| Body::from(b.to_string())),
        )
        .await
    }

    /// One request with `body` as given; the answer's status and JSON.
    async fn send(&self, method: &str, path: &str, body: Body) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body)
            .expect("request");
        let resp = self.router().oneshot(req).await.expect("an answer");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
    }
}

#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let rig = Rig::new();
    let problems = check_router(rig.router(), &xdpath_api::openapi::document()).await;
    assert_eq!(problems, Vec::<String>::new());
}

#[tokio::test]
async fn rules_reach_the_maps_and_bad_input_changes_nothing() {
    let rig = Rig::new();
    let before: FakeContents = rig.maps(|m| m.contents());
    assert_eq!(before.macs.len(), 1, "the guest's MAC is projected");
    assert_eq!(before.neigh.len(), 1, "the guest's address is projected");

    // Bad input: a 400 naming the field, nothing written.
    let (status, body) = rig
        .call(
            "POST",
            "/v1/flows",
            Some(json!({"src": "10.0.0.2", "dst": "10.0.0.300", "proto": "udp", "action": "drop"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "dst");
    assert_eq!(rig.maps(|m| m.contents()), before);

    // A good rule lands in the active generation of FLOWS.
    let (status, body) = rig
        .call(
            "POST",
            "/v1/flows",
            Some(
                json!({"src": "10.0.0.2", "dst": "10.0.0.11", "proto": "udp",
                        "dst_port": 53, "action": "guest"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["id"], 1);
    let (gen, flows) = rig.maps(|m| {
        (
            m.generations().expect("generations").rules,
            m.entries_of::<Flows>().expect("entries"),
        )
    });
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].0.gen, gen);
    assert_eq!((flows[0].1.rule_id, flows[0].1.port), (1, 1));

    // A bulk replace switches generation; the listing says what is there.
    let (status, body) = rig
        .call(
            "PUT",
            "/v1/flows",
            Some(
                json!([{"src": "10.0.0.2", "dst": "10.0.0.12", "proto": "tcp", "action": "drop"},
                        {"src": "10.0.0.3", "dst": "10.0.0.12", "proto": "tcp", "action": "drop"}]),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 2, "{body}");
    let (new_gen, flows) = rig.maps(|m| {
        (
            m.generations().expect("generations").rules,
            m.entries_of::<Flows>().expect("entries"),
        )
    });
    assert_ne!(new_gen, gen, "a bulk replace switches generation");
    assert_eq!(
        body["generation"], new_gen,
        "the answer names the new generation"
    );
    assert!(flows.iter().all(|(k, _)| k.gen == new_gen), "{flows:?}");
    assert_eq!(flows.len(), 2);
    assert!(rig.maps(|m| m.violations().is_empty()));

    // Deleting an unknown id: 404, nothing changed.
    let before = rig.maps(|m| m.contents());
    let (status, _) = rig.call("DELETE", "/v1/flows/99", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(rig.maps(|m| m.contents()), before);
}

#[tokio::test]
async fn queues_are_replaced_through_the_pool_and_counters_are_shown() {
    let rig = Rig::new();
    let (status, body) = rig.call("POST", "/v1/queues/1/replace", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["generation"], 2);
    // No guest connected: the new socket stays out of the XSKMAP (its
    // traffic fails open to the host).
    assert_eq!(rig.maps(|m| m.xsk(1)), None);
    let (_, queues) = rig.call("GET", "/v1/queues", None).await;
    assert_eq!(queues[1]["socket_generation"], 2);
    assert_eq!(queues[0]["socket_generation"], 1);
    let (status, _) = rig.call("POST", "/v1/queues/9/replace", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    rig.maps(|m| {
        m.set_counters(Counters {
            frames: 42,
            action_host: 40,
            action_drop: 2,
            ..Counters::default()
        })
    });
    let (_, stats) = rig.call("GET", "/v1/stats", None).await;
    assert_eq!(stats["classifier"]["frames"], 42);
    assert_eq!(stats["queues"].as_array().map(Vec::len), Some(2));
    let (status, metrics) = rig.call("GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().expect("metrics text");
    assert!(
        text.contains("xdpath_classifier_frames_total{iface=\"mem0\"} 42"),
        "{text}"
    );
    assert!(
        text.contains(
            "xdpath_queue_rx_frames_total{iface=\"mem0\",guest=\"default\",queue=\"1\"} 0"
        ),
        "{text}"
    );
    let (_, health) = rig.call("GET", "/v1/health", None).await;
    assert_eq!(
        (
            health["xdp_prog_id"].clone(),
            health["guest_connected"].clone()
        ),
        (json!(7), json!(false))
    );
}

/// A body that arrives in these pieces (a chunked request).
fn pieces(parts: Vec<Vec<u8>>) -> Body {
    struct Pieces(std::collections::VecDeque<Vec<u8>>);
    impl http_body::Body for Pieces {
        type Data = axum::body::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Ready(
                self.0
                    .pop_front()
                    .map(|p| Ok(http_body::Frame::data(p.into()))),
            )
        }
    }
    Body::new(Pieces(parts.into()))
}

fn flow_json(i: u32) -> Value {
    json!({"src": "10.1.0.1", "dst": format!("10.2.{}.{}", i / 256, i % 256), "proto": "udp", "action": "drop"})
}

#[tokio::test]
async fn the_rule_caps_are_enforced_and_named() {
    let rig = Rig::with("max_flows = 3\nmax_prefixes = 2");
    let before = rig.maps(|m| m.contents());
    // One rule too many in a bulk list: 413 naming the field and the cap;
    // nothing changes.
    let four: Vec<Value> = (0..4).map(flow_json).collect();
    let (status, body) = rig.call("PUT", "/v1/flows", Some(json!(four))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["field"], "rules");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("more than 3 exact rules") && msg.contains("max_flows"),
        "{msg}"
    );
    assert_eq!(rig.maps(|m| m.contents()), before);
    // At the cap: taken.
    let three: Vec<Value> = (0..3).map(flow_json).collect();
    let (status, body) = rig.call("PUT", "/v1/flows", Some(json!(three))).await;
    assert_eq!((status, body["count"].clone()), (StatusCode::OK, json!(3)));
    // A single add to a full table: 507 naming the cap.
    let (status, body) = rig.call("POST", "/v1/flows", Some(flow_json(9))).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("3 exact rules")
            && body["error"].as_str().unwrap().contains("max_flows"),
        "{body}"
    );
    // Prefixes have their own cap.
    let (status, body) = rig
        .call(
            "PUT",
            "/v1/prefixes",
            Some(json!([
                {"prefix": "10.0.0.0/8", "action": "drop"},
                {"prefix": "10.1.0.0/16", "action": "drop"},
                {"prefix": "10.2.0.0/16", "action": "drop"}
            ])),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("max_prefixes"),
        "{body}"
    );
    let (_, flows) = rig.call("GET", "/v1/flows", None).await;
    assert_eq!(flows.as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn a_bulk_list_is_read_as_it_arrives_and_errors_keep_index_and_field() {
    let rig = Rig::new();
    // The list in pieces cut anywhere, even inside a string.
    let text = serde_json::to_vec(&(0..50).map(flow_json).collect::<Vec<_>>()).unwrap();
    let parts: Vec<Vec<u8>> = text.chunks(7).map(<[u8]>::to_vec).collect();
    let (status, body) = rig.send("PUT", "/v1/flows", pieces(parts)).await;
    assert_eq!(
        (status, body["count"].clone()),
        (StatusCode::OK, json!(50)),
        "{body}"
    );
    let before = rig.maps(|m| m.contents());
    // A bad rule: its index and field.
    let mut list: Vec<Value> = (0..5).map(flow_json).collect();
    list[3]["dst"] = json!("10.0.0.300");
    let (status, body) = rig.call("PUT", "/v1/flows", Some(json!(list))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "dst");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Rule 3: field `dst`:"),
        "{body}"
    );
    // Malformed JSON after it still counts as malformed JSON.
    let (status, body) = rig
        .send("PUT", "/v1/flows", Body::from("[{\"src\": 1}, {"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    // An id given twice: 409.
    let mut list: Vec<Value> = (0..3).map(flow_json).collect();
    list[0]["id"] = json!(5);
    list[2]["id"] = json!(5);
    let (status, _) = rig.call("PUT", "/v1/flows", Some(json!(list))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        rig.maps(|m| m.contents()),
        before,
        "refusals change nothing"
    );
}

#[tokio::test]
async fn echoed_input_is_cut_short() {
    let rig = Rig::new();
    // Under the string cap of a bulk list (1024 bytes), far over what a
    // message repeats (64 characters).
    let huge = "x".repeat(1000);
    let checks = [
        (
            "PUT",
            "/v1/flows".to_string(),
            json!([{"src": "10.0.0.1", "dst": huge, "proto": "udp", "action": "drop"}]),
            "dst",
        ),
        (
            "PUT",
            "/v1/prefixes".to_string(),
            json!([{"prefix": huge, "action": "drop"}]),
            "prefix",
        ),
        (
            "PUT",
            "/v1/flows".to_string(),
            json!([{"src": "10.0.0.1", "dst": "10.0.0.2", "proto": huge, "action": "drop"}]),
            "proto",
        ),
        (
            "PUT",
            "/v1/flows".to_string(),
            json!([{"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "udp", "action": huge}]),
            "action",
        ),
        (
            "PUT",
            "/v1/flows".to_string(),
            json!([{"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "udp", "action": "drop", "guest": [huge]}]),
            "guest",
        ),
        ("PUT", "/v1/flows".to_string(), json!([huge]), "rule"),
        (
            "POST",
            "/v1/flows".to_string(),
            json!({"src": "x".repeat(60_000), "dst": "10.0.0.2", "proto": "udp", "action": "drop"}),
            "src",
        ),
    ];
    for (method, path, body, field) in checks {
        let (status, answer) = rig.call(method, &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
        assert_eq!(answer["field"], field);
        let text = answer.to_string();
        assert!(
            text.len() < 600,
            "{field}: {} bytes: {text:.300}",
            text.len()
        );
        assert!(
            text.contains("xxxxxxxx"),
            "{field}: the start is shown: {text}"
        );
    }
    // Over the string cap: refused as such, at once, naming rule and field.
    let (status, answer) = rig
        .call(
            "PUT",
            "/v1/flows",
            Some(json!([flow_json(0), {"src": "10.0.0.1", "dst": "x".repeat(1 << 20), "proto": "udp", "action": "drop"}])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer["error"],
        "Rule 1: field `dst`: a string of more than 1024 bytes; no field takes one that long."
    );
    // An unknown field with a huge name: the name is cut too.
    let mut rule = flow_json(1);
    rule[huge.as_str()] = json!(1);
    let (status, answer) = rig.call("PUT", "/v1/flows", Some(json!([rule]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer.to_string().len() < 600,
        "{:.300}",
        answer.to_string()
    );
    assert!(answer["field"].as_str().unwrap().len() < 100);
    // A huge path parameter.
    let (status, answer) = rig
        .call("DELETE", &format!("/v1/flows/{}", "9".repeat(30_000)), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer.to_string().len() < 600,
        "{:.300}",
        answer.to_string()
    );
}

/// Of several problems in a bulk list, the first in list order is
/// answered, whichever thread found it (rules are validated while they are
/// read, and compared with each other on another thread, in batches).
#[tokio::test]
async fn the_first_problem_of_a_bulk_list_is_answered() {
    let rig = Rig::new();
    let before = rig.maps(|m| m.contents());
    let bad = || json!({"src": "10.0.0.1", "dst": "10.0.0.300", "proto": "udp", "action": "drop"});
    for n in [20u32, 10_000] {
        let list = |edit: &dyn Fn(&mut Vec<Value>)| {
            let mut l: Vec<Value> = (0..n).map(flow_json).collect();
            edit(&mut l);
            json!(l)
        };
        let late = n as usize - 2;
        let cases: Vec<(Value, StatusCode, &str)> = vec![
            // A conflict (rule 3 matches rule 1) before a bad rule.
            (
                list(&|l| {
                    l[3] = flow_json(1);
                    l[late] = bad();
                }),
                StatusCode::CONFLICT,
                "matches the same 5-tuple",
            ),
            // A bad rule before a conflict.
            (
                list(&|l| {
                    l[2] = bad();
                    l[late] = flow_json(1);
                }),
                StatusCode::BAD_REQUEST,
                "Rule 2: field `dst`",
            ),
            // An id given twice before a rule that is not an object.
            (
                list(&|l| {
                    l[1]["id"] = json!(9);
                    l[4]["id"] = json!(9);
                    l[late] = json!(7);
                }),
                StatusCode::CONFLICT,
                "id 9 is already taken",
            ),
            // A rule that is not an object before an id given twice.
            (
                list(&|l| {
                    l[1] = json!(7);
                    l[4]["id"] = json!(9);
                    l[late]["id"] = json!(9);
                }),
                StatusCode::BAD_REQUEST,
                "Rule 1: field `rule`",
            ),
        ];
        for (body, status, says) in cases {
            let (got, answer) = rig.call("PUT", "/v1/flows", Some(body)).await;
            assert_eq!(got, status, "{n} rules: {answer}");
            assert!(
                answer["error"].as_str().is_some_and(|e| e.contains(says)),
                "{n} rules: {answer}"
            );
        }
        // Malformed JSON after a conflict is malformed JSON.
        let mut text = list(&|l| l[3] = flow_json(1)).to_string();
        text.pop();
        text.push_str(", {");
        let (got, answer) = rig.send("PUT", "/v1/flows", Body::from(text)).await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("not valid JSON")),
            "{answer}"
        );
    }
    assert_eq!(
        rig.maps(|m| m.contents()),
        before,
        "refusals change nothing"
    );
    // And a good list of many batches is taken whole.
    let (status, body) = rig
        .call(
            "PUT",
            "/v1/flows",
            Some(json!((0..10_000).map(flow_json).collect::<Vec<_>>())),
        )
        .await;
    assert_eq!(
        (status, body["count"].clone()),
        (StatusCode::OK, json!(10_000))
    );
}

/// Listings hold their memory until they are sent: at most two at once.
#[tokio::test]
async fn at_most_two_listings_are_in_memory_at_once() {
    let rig = Rig::new();
    let router = rig.router();
    let get = |path: &'static str| {
        let router = router.clone();
        async move {
            let req = Request::builder()
                .uri(path)
                .body(Body::empty())
                .expect("request");
            router.oneshot(req).await.expect("an answer")
        }
    };
    // Two answers whose bodies nobody reads yet.
    let first = get("/v1/flows").await;
    let second = get("/v1/prefixes").await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let third = tokio::spawn(get("/v1/flows"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third listing waits");
    // One is sent: the third goes ahead.
    let sent = axum::body::to_bytes(first.into_body(), 1 << 20)
        .await
        .expect("body");
    assert_eq!(&sent[..], b"[]");
    let third = tokio::time::timeout(std::time::Duration::from_secs(10), third)
        .await
        .expect("the third listing goes ahead")
        .expect("task");
    assert_eq!(third.status(), StatusCode::OK);
    drop(second);
    // Other routes never wait for listings.
    let (status, _) = rig.call("GET", "/v1/health", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// Guests come and go through the API: an added guest's MAC and address
/// reach the guest tables and its socket appears; bad names, duplicate
/// MACs, sockets or addresses and unknown guests in rules are refused
/// naming the field, changing nothing; a guest rules name is removed only
/// with force, its rules with it, in one step; a removed guest's socket
/// and entries are gone and the other guest is untouched.
#[tokio::test]
async fn guests_are_added_refused_and_removed_through_the_api() {
    let rig = Rig::new();
    let sock = rig.dir.join("web1.sock");
    let web1 = json!({"name": "web1", "mac": "52:54:00:00:00:21", "ips": ["10.0.0.21"],
                      "vhost_socket": sock});
    let (status, body) = rig.call("POST", "/v1/guests", Some(web1.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["id"].clone(), body["connected"].clone()),
        (json!(2), json!(false))
    );
    assert!(sock.exists(), "the guest's socket is there");
    let macs = |rig: &Rig| -> Vec<([u8; 6], u32)> {
        let gen = rig.maps(|m| m.contents().gens.guests);
        rig.maps(|m| m.contents())
            .macs
            .into_iter()
            .filter(|(k, _)| k.gen == gen)
            .map(|(k, v)| (k.mac, v.port))
            .collect()
    };
    assert_eq!(
        macs(&rig),
        [
            ([0x52, 0x54, 0, 0, 0, 0x11], 1),
            ([0x52, 0x54, 0, 0, 0, 0x21], 2)
        ]
    );

    let before = rig.maps(|m| m.contents());
    for (body, status, field, text) in [
        (
            json!({"name": "Web 2", "mac": "52:54:00:00:00:22"}),
            400,
            "name",
            "is not a guest name",
        ),
        (
            json!({"name": "web2", "mac": "52:54:00:00:00:21"}),
            409,
            "mac",
            "is guest \"web1\"'s already",
        ),
        (
            json!({"name": "web2", "mac": "52:54:00:00:00:22", "vhost_socket": sock}),
            409,
            "vhost_socket",
            "web1",
        ),
        (
            json!({"name": "web2", "mac": "52:54:00:00:00:22", "ips": ["10.0.0.21"]}),
            409,
            "ips",
            "web1",
        ),
        (
            json!({"name": "web1", "mac": "52:54:00:00:00:22"}),
            409,
            "name",
            "web1",
        ),
        (
            json!({"name": "web2", "mac": "52:54:00:00:00:22", "queues": 9}),
            400,
            "queues",
            "queue pairs",
        ),
        (
            json!({"name": "web2", "mac": "52:54:00:00:00:22", "colour": 1}),
            400,
            "colour",
            "",
        ),
    ] {
        let (got, answer) = rig.call("POST", "/v1/guests", Some(body.clone())).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        assert_eq!(answer["field"], json!(field), "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(text),
            "{body}: {answer}"
        );
    }
    assert_eq!(
        rig.maps(|m| m.contents()),
        before,
        "refusals change nothing"
    );
    let (_, list) = rig.call("GET", "/v1/guests", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Rules name guests; an unknown one is refused naming the field.
    let rule = |guest: &str| {
        json!({"src": "10.9.9.9", "dst": "10.0.0.21", "proto": "udp", "dst_port": 53,
               "action": "guest", "guest": guest})
    };
    let (status, answer) = rig.call("POST", "/v1/flows", Some(rule("db1"))).await;
    assert_eq!(
        (status.as_u16(), answer["field"].clone()),
        (400, json!("guest")),
        "{answer}"
    );
    let (status, answer) = rig.call("POST", "/v1/flows", Some(rule("web1"))).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["guest"], json!("web1"), "listed by name: {answer}");
    let (_, flows) = rig.call("GET", "/v1/flows", None).await;
    assert_eq!(flows[0]["guest"], json!("web1"));
    let (_, g) = rig.call("GET", "/v1/guests/web1", None).await;
    assert_eq!(g["rules"], json!(1));

    // Removal: refused while a rule names it, then forced.
    let (status, answer) = rig.call("DELETE", "/v1/guests/web1", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(sock.exists());
    let (status, answer) = rig.call("DELETE", "/v1/guests/web1?force=yes", None).await;
    assert_eq!(
        (status.as_u16(), answer["field"].clone()),
        (400, json!("force")),
        "{answer}"
    );
    let (status, _) = rig.call("DELETE", "/v1/guests/web1?force=true", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!sock.exists(), "its socket is gone");
    assert_eq!(
        macs(&rig),
        [([0x52, 0x54, 0, 0, 0, 0x11], 1)],
        "its entries are gone"
    );
    let (_, flows) = rig.call("GET", "/v1/flows", None).await;
    assert_eq!(flows, json!([]), "its rule went with it");
    let (status, _) = rig.call("GET", "/v1/guests/web1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = rig.call("DELETE", "/v1/guests/web1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The registry on disk says the same.
    let saved = std::fs::read_to_string(rig.state.cfg.guest_file()).unwrap();
    assert!(
        saved.contains("\"default\"") && !saved.contains("web1"),
        "{saved}"
    );
}

/// `PUT /v1/flows` with `rules` (a JSON array) sent in two parts, guest
/// `remove` removed between them, while the list is being read; the
/// answer.
async fn replace_while_removing(rig: &Rig, rules: &Value, remove: &str) -> (StatusCode, Value) {
    let (mut tx, stream) = http_body_util::channel::Channel::<axum::body::Bytes>::new(4);
    let req = Request::builder()
        .method("PUT")
        .uri("/v1/flows")
        .header("content-type", "application/json")
        .body(Body::new(stream))
        .expect("request");
    let put = tokio::spawn(rig.router().oneshot(req));
    let text = rules.to_string();
    let (head, tail) = text.split_at(text.len() - 1);
    tx.send_data(head.to_string().into())
        .await
        .expect("the first part is read");
    // The list's reading has begun (its guests were looked up) once the
    // handler took the first part; then the guest goes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, answer) = rig
        .call("DELETE", &format!("/v1/guests/{remove}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    tx.send_data(tail.to_string().into())
        .await
        .expect("the rest is read");
    drop(tx);
    let resp = put.await.expect("the PUT task").expect("an answer");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).expect("a JSON answer"),
    )
}

/// A guest removed while a bulk list that names it is still being read:
/// the list is refused (409, naming the guest) and the table is unchanged,
/// so no rule ever names a freed guest id. A guest the list does not name
/// may go meanwhile. A single add cannot race this way: it holds the
/// guests' lock.
#[tokio::test]
async fn a_bulk_list_naming_a_guest_removed_while_it_is_read_changes_nothing() {
    let rig = Rig::new();
    for (name, mac) in [("web1", "21"), ("web2", "22"), ("web3", "23")] {
        let g = json!({"name": name, "mac": format!("52:54:00:00:00:{mac}"),
                       "vhost_socket": rig.dir.join(format!("{name}.sock"))});
        let (status, body) = rig.call("POST", "/v1/guests", Some(g)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let rule = |guest: &str, port: u16| {
        json!({"src": "10.9.9.9", "dst": "10.0.0.21", "proto": "udp", "dst_port": port,
               "action": "guest", "guest": guest})
    };

    let list = json!([rule("web3", 53), rule("web1", 54)]);
    let (status, answer) = replace_while_removing(&rig, &list, "web1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let text = answer["error"].as_str().unwrap_or_default();
    assert!(
        text.contains("\"web1\" was removed while the list was read"),
        "{answer}"
    );
    let (_, flows) = rig.call("GET", "/v1/flows", None).await;
    assert_eq!(flows, json!([]), "nothing was changed");
    assert!(
        rig.maps(|m| m.contents()).flows.is_empty(),
        "no rule names the freed id"
    );

    let list = json!([rule("web3", 53)]);
    let (status, answer) = replace_while_removing(&rig, &list, "web2").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a guest the list does not name may go: {answer}"
    );
    let (_, flows) = rig.call("GET", "/v1/flows", None).await;
    assert_eq!(flows[0]["guest"], json!("web3"), "{flows}");
}

/// A removal whose guest file cannot be written: the guest is gone from
/// the daemon (its entries, its listing), the answer is a 500 that says
/// so and that it comes back at the next start, and the next change that
/// saves writes the file without it.
#[tokio::test]
async fn a_removal_the_guest_file_cannot_record_is_reported() {
    let rig = Rig::new();
    let web1 = json!({"name": "web1", "mac": "52:54:00:00:00:21",
                      "vhost_socket": rig.dir.join("web1.sock")});
    let (status, body) = rig.call("POST", "/v1/guests", Some(web1)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let file = rig.state.cfg.guest_file();

    rig.state
        .guests
        .fail_saves_at(Some(xdpath_control::guest_registry::SaveStep::Rename));
    let (status, answer) = rig.call("DELETE", "/v1/guests/web1", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    let text = answer["error"].as_str().unwrap_or_default();
    assert!(
        text.contains("\"web1\" was removed, but saving the guest file")
            && text.contains("comes back at the next start"),
        "{answer}"
    );
    let (status, _) = rig.call("GET", "/v1/guests/web1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the daemon no longer has it");
    let on_disk = std::fs::read_to_string(&file).expect("guest file");
    assert!(
        on_disk.contains("web1"),
        "the file still lists it: {on_disk}"
    );

    rig.state.guests.fail_saves_at(None);
    let web2 = json!({"name": "web2", "mac": "52:54:00:00:00:22",
                      "vhost_socket": rig.dir.join("web2.sock")});
    let (status, body) = rig.call("POST", "/v1/guests", Some(web2)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let on_disk = std::fs::read_to_string(&file).expect("guest file");
    assert!(
        on_disk.contains("web2") && !on_disk.contains("web1"),
        "{on_disk}"
    );
}
